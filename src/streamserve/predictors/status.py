"""One table from a remote failure (gRPC status, HTTP status, transport error) to our errors.

Remote predictors raise only :class:`~streamserve.errors.StreamserveError` subclasses, so
the stream processor can decide on retries by class alone:

- transient, worth a retry: :class:`Unavailable` (UNAVAILABLE, RESOURCE_EXHAUSTED, ABORTED,
  CANCELLED, HTTP 429/502/503, refused or broken connections) and :class:`DeadlineExceeded`
  (DEADLINE_EXCEEDED, HTTP 408/504, client-side timeouts);
- the model rejects this input: :class:`InvalidArgument` (INVALID_ARGUMENT, OUT_OF_RANGE,
  HTTP 400/413/422) and :class:`FailedPrecondition`;
- configuration problems: :class:`NotFound` (unknown model/version/label, HTTP 404),
  :class:`Unimplemented`;
- anything else: :class:`Internal` keeping the remote code.

Messages start with the target so that logs and DLQ headers say which server failed.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

from streamserve.errors import (
    Code,
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    StreamserveError,
    Unavailable,
    Unimplemented,
)

_TRANSIENT = frozenset({Code.UNAVAILABLE, Code.RESOURCE_EXHAUSTED, Code.ABORTED, Code.CANCELLED})

_BY_CODE: dict[Code, type[StreamserveError]] = {
    Code.DEADLINE_EXCEEDED: DeadlineExceeded,
    Code.INVALID_ARGUMENT: InvalidArgument,
    Code.OUT_OF_RANGE: InvalidArgument,
    Code.FAILED_PRECONDITION: FailedPrecondition,
    Code.NOT_FOUND: NotFound,
    Code.UNIMPLEMENTED: Unimplemented,
}

_HTTP_CODES: dict[int, Code] = {
    400: Code.INVALID_ARGUMENT,
    401: Code.UNAUTHENTICATED,
    403: Code.PERMISSION_DENIED,
    404: Code.NOT_FOUND,
    408: Code.DEADLINE_EXCEEDED,
    409: Code.ABORTED,
    413: Code.INVALID_ARGUMENT,  # the batch is too big for the server: a retry cannot help
    422: Code.INVALID_ARGUMENT,
    429: Code.RESOURCE_EXHAUSTED,
    499: Code.CANCELLED,
    500: Code.INTERNAL,
    501: Code.UNIMPLEMENTED,
    502: Code.UNAVAILABLE,
    503: Code.UNAVAILABLE,
    504: Code.DEADLINE_EXCEEDED,
}


def error_from_code(code: Code, message: str, target: str) -> StreamserveError:
    """The exception for a remote call that ended with canonical ``code``."""
    text = f"{target}: {code.name}: {message}"
    if code in _TRANSIENT:
        return Unavailable(text)
    error_type = _BY_CODE.get(code)
    if error_type is not None:
        return error_type(text)
    return Internal(text, code=code)


def error_from_http(status: int, body: bytes, target: str) -> StreamserveError:
    """The exception for a non-2xx HTTP response; the body's ``{"error": ...}`` is the message."""
    code = _HTTP_CODES.get(status)
    if code is None:
        code = Code.UNAVAILABLE if status >= 500 else Code.INVALID_ARGUMENT
    return error_from_code(code, f"HTTP {status}: {_error_text(body)}", target)


def error_from_transport(exc: BaseException, target: str) -> StreamserveError:
    """The exception for a call that got no response at all (refused, reset, timed out)."""
    text = f"{target}: {type(exc).__name__}: {exc}".rstrip(": ")
    if isinstance(exc, TimeoutError | asyncio.TimeoutError) or "Timeout" in type(exc).__name__:
        return DeadlineExceeded(text)
    return Unavailable(text)


def _error_text(body: bytes, limit: int = 500) -> str:
    try:
        parsed: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        parsed = None
    error = parsed.get("error") if isinstance(parsed, dict) else None
    if isinstance(error, str):
        text = error
    else:
        text = body.decode("utf-8", "replace").strip() or "(empty body)"
    return text if len(text) <= limit else text[: limit - 3] + "..."
