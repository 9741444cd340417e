"""Writing handled records: the output record, or a dead-letter record saying why not.

A DLQ record carries the input's key, value and headers unchanged, plus headers naming
the failure (``streamserve.error.stage`` / ``.reason`` / ``.exception``) and where the
record came from (``streamserve.source.topic`` / ``.partition`` / ``.offset``).
"""

from __future__ import annotations

import logging
from typing import Literal

from confluent_kafka import KafkaException

from streamserve.stream.errors import RecordError
from streamserve.stream.kafka_io import Headers, Sink
from streamserve.stream.pipeline import Work
from streamserve.stream.records import InputRecord
from streamserve.stream.telemetry import StreamMetrics, log_event

log = logging.getLogger("streamserve.stream")

ERROR_HEADER_PREFIX = "streamserve.error."
SOURCE_HEADER_PREFIX = "streamserve.source."
MAX_REASON_BYTES = 4096


def exception_name(error: RecordError) -> str:
    if error.exception_name:
        return error.exception_name
    return type(error.__cause__).__name__ if error.__cause__ else type(error).__name__


def dlq_headers(record: InputRecord, error: RecordError) -> Headers:
    original = [(key, value) for key, value in record.headers if value is not None]
    return [
        *original,
        (f"{ERROR_HEADER_PREFIX}stage", error.stage.encode()),
        (
            f"{ERROR_HEADER_PREFIX}reason",
            error.reason.encode("utf-8", "replace")[:MAX_REASON_BYTES],
        ),
        (f"{ERROR_HEADER_PREFIX}exception", exception_name(error).encode()),
        (f"{SOURCE_HEADER_PREFIX}topic", record.topic.encode()),
        (f"{SOURCE_HEADER_PREFIX}partition", str(record.partition).encode()),
        (f"{SOURCE_HEADER_PREFIX}offset", str(record.offset).encode()),
    ]


class OutputWriter:
    """Produces one handled :class:`Work` (in order; the caller guarantees it)."""

    def __init__(
        self,
        sink: Sink,
        output_topic: str,
        dlq_topic: str,
        output_partitions: int,
        partitioning: Literal["input", "key"],
        metrics: StreamMetrics,
    ) -> None:
        self.sink = sink
        self.output_topic = output_topic
        self.dlq_topic = dlq_topic
        self.output_partitions = max(1, output_partitions)
        self.partitioning = partitioning
        self.metrics = metrics

    def write(self, work: Work, now_ms: float) -> None:
        record = work.record
        if work.error is not None:
            self.dead_letter(record, work.error)
        else:
            self._output(work)
        if record.timestamp_ms is not None:
            self.metrics.e2e_latency.observe(max(0.0, now_ms - record.timestamp_ms) / 1000)

    def _output(self, work: Work) -> None:
        record = work.record
        try:
            self.sink.produce(
                self.output_topic, work.output, record.key, partition=self._partition(record)
            )
        except KafkaException as exc:  # e.g. the output is larger than message.max.bytes
            error = exc.args[0] if exc.args else exc
            self.dead_letter(
                record, RecordError("produce", f"output refused: {error}", "KafkaException")
            )
            return
        self.metrics.records_out.labels(work.mode).inc()
        if work.mode == "fallback":
            self.metrics.fallback_records.inc()

    def _partition(self, record: InputRecord) -> int | None:
        if self.partitioning == "key":
            return None  # Kafka's default partitioner on the key
        return record.partition % self.output_partitions

    def dead_letter(self, record: InputRecord, error: RecordError) -> None:
        headers = dlq_headers(record, error)
        try:
            self.sink.produce(self.dlq_topic, record.value, record.key, headers)
        except KafkaException:
            # The original value does not fit (headers add bytes): keep the why, drop the value.
            headers.append((f"{ERROR_HEADER_PREFIX}value-dropped", b"true"))
            self.sink.produce(self.dlq_topic, None, record.key, headers)
        self.metrics.records_dlq.labels(error.stage).inc()
        log_event(
            log,
            "record to dlq",
            logging.WARNING,
            position=record.position,
            stage=error.stage,
            reason=error.reason[:300],
            exception=exception_name(error),
        )
