"""One exception root for the whole project.

Core code raises these with a transport-neutral :class:`Code` (the canonical
gRPC/absl status codes, as TF Serving uses); protocol adapters map the code to a
gRPC status, an HTTP status or a DLQ header at the edge, using the tables here.
"""

from __future__ import annotations

import enum


class Code(enum.IntEnum):
    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


# TF Serving's http_server.cc mapping of canonical codes to HTTP statuses.
_HTTP_STATUS = {
    Code.OK: 200,
    Code.CANCELLED: 499,
    Code.UNKNOWN: 500,
    Code.INVALID_ARGUMENT: 400,
    Code.DEADLINE_EXCEEDED: 504,
    Code.NOT_FOUND: 404,
    Code.ALREADY_EXISTS: 409,
    Code.PERMISSION_DENIED: 403,
    Code.RESOURCE_EXHAUSTED: 429,
    Code.FAILED_PRECONDITION: 400,
    Code.ABORTED: 409,
    Code.OUT_OF_RANGE: 400,
    Code.UNIMPLEMENTED: 501,
    Code.INTERNAL: 500,
    Code.UNAVAILABLE: 503,
    Code.DATA_LOSS: 500,
    Code.UNAUTHENTICATED: 401,
}


def http_status(code: Code) -> int:
    return _HTTP_STATUS[code]


class StreamserveError(Exception):
    """Root of every error streamserve raises on purpose."""

    code: Code = Code.UNKNOWN

    def __init__(self, message: str, code: Code | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class InvalidArgument(StreamserveError):
    code = Code.INVALID_ARGUMENT


class InputRejected(InvalidArgument):
    """A remote model's signature rejects the input, found before sending it: ``reason``
    is in the runtimes' words (the same as embedded mode's), ``target`` names the server."""

    def __init__(self, reason: str, target: str) -> None:
        super().__init__(f"{target}: INVALID_ARGUMENT: {reason}")
        self.reason = reason
        self.target = target


class NotFound(StreamserveError):
    code = Code.NOT_FOUND


class FailedPrecondition(StreamserveError):
    code = Code.FAILED_PRECONDITION


class ResourceExhausted(StreamserveError):
    code = Code.RESOURCE_EXHAUSTED


class Unavailable(StreamserveError):
    code = Code.UNAVAILABLE


class DeadlineExceeded(StreamserveError):
    code = Code.DEADLINE_EXCEEDED


class Unimplemented(StreamserveError):
    code = Code.UNIMPLEMENTED


class Internal(StreamserveError):
    code = Code.INTERNAL


class DataLoss(StreamserveError):
    """Unreadable or corrupted data (a model file, a warm-up file)."""

    code = Code.DATA_LOSS


class SetupError(StreamserveError):
    """An environment problem (Java, Maven, ports, directories) a user must fix."""

    code = Code.FAILED_PRECONDITION


class ModelLoadFailed(SetupError):
    """A model the command was started with did not become AVAILABLE (fail-fast start-up,
    as ``tensorflow_model_server`` refuses to start); the message carries the load error."""


class MissingExtra(SetupError):
    """An optional dependency group (``pip install 'streamserve[EXTRA]'``) is not installed."""

    def __init__(self, extra: str, module: str, purpose: str) -> None:
        super().__init__(
            f"{purpose} needs the '{extra}' extra (module {module!r} is missing): "
            f"pip install 'streamserve[{extra}]'"
        )
        self.extra = extra


class KafkaConnectError(Unavailable):
    """No Kafka broker answered, or it refused our credentials or certificate.

    The CLI exits with its own status for this (``streamserve.cli.EXIT_KAFKA_CONNECT``),
    distinct from usage errors, so an orchestrator can tell "fix the flags" from "fix the
    network or the secret".
    """
