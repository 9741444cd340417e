"""Per-record failures: anything that sends one record to the dead-letter queue."""

from __future__ import annotations

from streamserve.errors import Code, StreamserveError


class RecordError(StreamserveError):
    """One record cannot be handled; the stream goes on and the record goes to the DLQ.

    ``stage`` names the pipeline step that failed (``"decode"``, ``"fetch"``, ``"predict"``,
    ...), ``reason`` says why in words a user can act on, and ``exception_name`` names the
    underlying exception class when there was one.
    """

    code = Code.INVALID_ARGUMENT

    def __init__(self, stage: str, reason: str, exception_name: str = "") -> None:
        super().__init__(f"{stage}: {reason}")
        self.stage = stage
        self.reason = reason
        self.exception_name = exception_name


class DependencyUnavailable(StreamserveError):
    """Something every record needs (the Schema Registry) cannot be reached: the records
    are not at fault. The processor holds them, pauses consumption, reports not ready
    naming ``dependency``, and retries until it answers; nothing goes to the DLQ."""

    code = Code.UNAVAILABLE

    def __init__(self, dependency: str, reason: str) -> None:
        super().__init__(f"{dependency} unavailable: {reason}")
        self.dependency = dependency
        self.reason = reason
