"""A tiny ASGI application: a route table, a bounded body reader, JSON responses.

Why hand-written rather than a framework: the model server needs a dozen routes, a
request-body size limit, a per-request timeout and a canonical error mapping, nothing
more. A route table over plain ASGI costs one regex match per request, while
framework middleware stacks and request objects cost several times that on small
predict requests. The app is served by uvicorn with the ``httptools`` parser and
``uvloop`` (both C), and JSON goes through ``orjson``.

Adapters register routes from their own modules::

    app.add_route("GET", "/v2/health/live", handler)           # {name} placeholders allowed
    app.add_route_regex("POST", r"^/v1/models/(?P<name>[^/:]+):predict$", handler)

A handler is ``async def handler(request: Request) -> Response``. A
:class:`~streamserve.errors.StreamserveError` raised by a handler becomes
``{"error": message}`` with TF Serving's HTTP status for its code; anything else
becomes a 500 with the exception text, and the server keeps serving.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

from streamserve.errors import (
    Code,
    DeadlineExceeded,
    InvalidArgument,
    StreamserveError,
    http_status,
)

log = logging.getLogger(__name__)

DEFAULT_MAX_BODY_BYTES = 64 * 1024 * 1024
JSON_CONTENT_TYPE = b"application/json"
_PLACEHOLDER = re.compile(r"\{(\w+)\}")


class PayloadTooLarge(StreamserveError):
    """The request body exceeds the configured limit (HTTP 413)."""

    code = Code.RESOURCE_EXHAUSTED


class MethodNotAllowed(StreamserveError):
    """The path exists but not for this method (HTTP 405 with an ``Allow`` header)."""

    code = Code.UNIMPLEMENTED

    def __init__(self, message: str, allowed: Iterable[str]) -> None:
        super().__init__(message)
        self.allowed = sorted(set(allowed))


@dataclass
class Request:
    method: str
    path: str
    path_params: dict[str, str]
    query_string: bytes
    headers: dict[str, str]  # lower-case names; the last value wins
    body: bytes

    def json(self) -> Any:
        """The body parsed as JSON; NaN/Infinity accepted as TF Serving does."""
        return parse_json(self.body)


@dataclass
class Response:
    status: int = 200
    body: bytes = b""
    content_type: bytes = JSON_CONTENT_TYPE
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)


Handler = Callable[[Request], Awaitable[Response]]


@dataclass(frozen=True)
class _Route:
    method: str
    pattern: re.Pattern[str]
    handler: Handler


def parse_json(body: bytes) -> Any:
    if not body:
        raise InvalidArgument("JSON Parse error: The document is empty")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        pass
    try:  # the stdlib parser accepts NaN / Infinity / -Infinity, which orjson rejects
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidArgument(f"JSON Parse error: {exc}") from None
    except RecursionError:
        raise InvalidArgument("JSON Parse error: the document is nested too deeply") from None


def json_response(obj: Any, status: int = 200, allow_nan: bool = False) -> Response:
    """Serialise with orjson; ``allow_nan`` switches to the stdlib to emit NaN/Infinity."""
    if allow_nan:
        body = json.dumps(obj, separators=(",", ":"), default=_to_list).encode()
    else:
        body = orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY)
    return Response(status=status, body=body)


def _to_list(value: Any) -> Any:
    tolist = getattr(value, "tolist", None)  # numpy arrays and scalars
    if tolist is None:
        raise TypeError(f"{type(value).__name__} is not JSON serialisable")
    return tolist()


def error_response(code: Code, message: str, status: int | None = None) -> Response:
    return json_response({"error": message}, status=status or http_status(code))


def compile_template(template: str) -> re.Pattern[str]:
    """``/v2/models/{name}/ready`` → a regex whose groups match one path segment each."""
    parts = _PLACEHOLDER.split(template)
    regex = "".join(
        f"(?P<{part}>[^/]+)" if index % 2 else re.escape(part) for index, part in enumerate(parts)
    )
    return re.compile(f"^{regex}$")


class App:
    """ASGI 3 application with a route table, body limit and per-request timeout."""

    def __init__(
        self, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, timeout_seconds: float | None = None
    ) -> None:
        self.max_body_bytes = max_body_bytes
        self.timeout_seconds = timeout_seconds
        self._routes: list[_Route] = []

    def add_route(self, method: str, template: str, handler: Handler) -> None:
        self._routes.append(_Route(method.upper(), compile_template(template), handler))

    def add_route_regex(self, method: str, regex: str, handler: Handler) -> None:
        self._routes.append(_Route(method.upper(), re.compile(regex), handler))

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await _answer_lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        response = await self._respond(scope, receive)
        await _send_response(send, response)

    async def _respond(self, scope: dict[str, Any], receive: Any) -> Response:
        method, path = scope["method"], scope["path"]
        try:
            handler, params = self._match(method, path)
            headers = _headers(scope)
            body = await self._read_body(receive, headers)
            request = Request(method, path, params, scope.get("query_string", b""), headers, body)
            if self.timeout_seconds:
                return await _with_timeout(handler(request), self.timeout_seconds)
            return await handler(request)
        except PayloadTooLarge as exc:
            return error_response(exc.code, exc.message, status=413)
        except MethodNotAllowed as exc:
            response = error_response(exc.code, exc.message, status=405)
            response.headers.append((b"allow", ", ".join(exc.allowed).encode()))
            return response
        except StreamserveError as exc:
            return error_response(exc.code, exc.message)
        except RecursionError:  # e.g. a nested structure deeper than the interpreter allows
            return error_response(Code.INVALID_ARGUMENT, "Request is nested too deeply")
        except Exception as exc:  # one bad request must never take the server down
            log.exception("unexpected error handling %s %s", method, path)
            return error_response(Code.INTERNAL, f"{type(exc).__name__}: {exc}")

    def _match(self, method: str, path: str) -> tuple[Handler, dict[str, str]]:
        allowed: list[str] = []
        for route in self._routes:
            found = route.pattern.match(path)
            if found is None:
                continue
            if route.method == method:
                return route.handler, {k: v for k, v in found.groupdict().items() if v is not None}
            allowed.append(route.method)
        if allowed:
            raise MethodNotAllowed(f"Method {method} not allowed for {path}", allowed)
        raise StreamserveError(f"Malformed request: {method} {path}", Code.NOT_FOUND)

    async def _read_body(self, receive: Any, headers: dict[str, str]) -> bytes:
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            raise _too_large(int(declared), self.max_body_bytes)
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise StreamserveError("client disconnected", Code.CANCELLED)
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                raise _too_large(size, self.max_body_bytes)
            chunks.append(chunk)
            if not message.get("more_body", False):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _too_large(size: int, limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"Request body of {size} bytes exceeds the limit of {limit} bytes")


async def _with_timeout(work: Awaitable[Response], seconds: float) -> Response:
    try:
        return await asyncio.wait_for(work, seconds)
    except TimeoutError:
        raise DeadlineExceeded(f"Request timed out after {seconds * 1000:.0f} ms") from None


def _headers(scope: dict[str, Any]) -> dict[str, str]:
    return {name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]}


async def _send_response(send: Any, response: Response) -> None:
    headers = [
        (b"content-type", response.content_type),
        (b"content-length", str(len(response.body)).encode()),
        *response.headers,
    ]
    await send({"type": "http.response.start", "status": response.status, "headers": headers})
    await send({"type": "http.response.body", "body": response.body})


async def _answer_lifespan(receive: Any, send: Any) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
