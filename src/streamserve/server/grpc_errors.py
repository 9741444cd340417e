"""The one table from :class:`~streamserve.errors.Code` to :class:`grpc.StatusCode`.

Every gRPC servicer method is wrapped with :func:`grpc_method` (or :func:`grpc_errors`),
so that a ``StreamserveError`` ends the call with its status and message, and an
unexpected exception ends it with ``INTERNAL`` (logged with its traceback) while the
server keeps serving. :func:`grpc_method` also reports each call to the core's request
observers (metrics).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from streamserve.errors import Code, StreamserveError

log = logging.getLogger(__name__)

GRPC_STATUS: dict[Code, grpc.StatusCode] = {
    Code.OK: grpc.StatusCode.OK,
    Code.CANCELLED: grpc.StatusCode.CANCELLED,
    Code.UNKNOWN: grpc.StatusCode.UNKNOWN,
    Code.INVALID_ARGUMENT: grpc.StatusCode.INVALID_ARGUMENT,
    Code.DEADLINE_EXCEEDED: grpc.StatusCode.DEADLINE_EXCEEDED,
    Code.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    Code.ALREADY_EXISTS: grpc.StatusCode.ALREADY_EXISTS,
    Code.PERMISSION_DENIED: grpc.StatusCode.PERMISSION_DENIED,
    Code.RESOURCE_EXHAUSTED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Code.FAILED_PRECONDITION: grpc.StatusCode.FAILED_PRECONDITION,
    Code.ABORTED: grpc.StatusCode.ABORTED,
    Code.OUT_OF_RANGE: grpc.StatusCode.OUT_OF_RANGE,
    Code.UNIMPLEMENTED: grpc.StatusCode.UNIMPLEMENTED,
    Code.INTERNAL: grpc.StatusCode.INTERNAL,
    Code.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    Code.DATA_LOSS: grpc.StatusCode.DATA_LOSS,
    Code.UNAUTHENTICATED: grpc.StatusCode.UNAUTHENTICATED,
}

Method = TypeVar("Method", bound=Callable[..., Awaitable[Any]])


def grpc_status(code: Code) -> grpc.StatusCode:
    return GRPC_STATUS[code]


def grpc_errors(method: Method) -> Method:
    """Decorate an async servicer method ``(self, request, context)``."""

    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await method(self, request, context)
        except StreamserveError as exc:
            await context.abort(grpc_status(exc.code), exc.message)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            log.exception("unexpected error in %s", method.__qualname__)
            await context.abort(grpc.StatusCode.INTERNAL, f"{type(exc).__name__}: {exc}")

    return wrapper  # type: ignore[return-value]


def grpc_method(
    protocol: str,
    api: str,
    model_of: Callable[[Any], str],
    version_of: Callable[[Any], str],
) -> Callable[[Method], Method]:
    """Decorate an async method of a servicer that has a ``core`` (InferenceCore).

    ``model_of(request)`` and ``version_of(response)`` name the model and the version
    that answered, for the request observers.
    """

    def decorate(method: Method) -> Method:
        @functools.wraps(method)
        async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
            started = time.perf_counter()
            status, version = "OK", ""
            try:
                response = await method(self, request, context)
                version = version_of(response)
                return response
            except StreamserveError as exc:
                status = exc.code.name
                await context.abort(grpc_status(exc.code), exc.message)
            except asyncio.CancelledError:
                status = "CANCELLED"
                raise
            except Exception as exc:
                status = "INTERNAL"
                log.exception("unexpected error in %s", method.__qualname__)
                await context.abort(grpc.StatusCode.INTERNAL, f"{type(exc).__name__}: {exc}")
            finally:
                core = self.core
                if core.observed:
                    core.observe_request(model_of(request), version, protocol, api, status, started)

        return wrapper  # type: ignore[return-value]

    return decorate
