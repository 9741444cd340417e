"""Writing handled records: the output record, or a dead-letter record saying why not.

An output keeps the input's key and carries the input's headers (all of them, or those a
:class:`HeaderPolicy` allows; ``traceparent`` and ``tracestate`` always), then
``streamserve.model.name`` / ``.version`` / ``.mode``, then any headers the codec adds.
A codec may return an :class:`~streamserve.stream.codecs.OutputRecord` to set the key,
headers or topic; a topic it did not declare in ``output_topics`` sends the record to
the DLQ (stage ``route``).

A DLQ record carries the input's key, value and headers unchanged, plus headers naming
the failure (``streamserve.error.stage`` / ``.reason`` / ``.exception``) and where the
record came from (``streamserve.source.topic`` / ``.partition`` / ``.offset``).
"""

from __future__ import annotations

import functools
import logging
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from confluent_kafka import KafkaException
from prometheus_client import Histogram

from streamserve.stream.codecs import InputRecord, OutputRecord, SameKey
from streamserve.stream.errors import RecordError
from streamserve.stream.kafka_io import Headers, Sink
from streamserve.stream.pipeline import Work
from streamserve.stream.telemetry import StreamMetrics, log_event

log = logging.getLogger("streamserve.stream")

ERROR_HEADER_PREFIX = "streamserve.error."
SOURCE_HEADER_PREFIX = "streamserve.source."
MODEL_HEADER_PREFIX = "streamserve.model."
ALWAYS_CARRIED = frozenset({"traceparent", "tracestate"})  # W3C trace context
MAX_REASON_BYTES = 4096


@dataclass(frozen=True)
class HeaderPolicy:
    """Which input headers an output carries: ``allow`` (None: every one) minus ``deny``;
    the trace context always, an upstream streamserve's ``streamserve.model.*`` never."""

    allow: frozenset[str] | None = None
    deny: frozenset[str] = frozenset()

    @classmethod
    def of(cls, allow: Iterable[str] | None, deny: Iterable[str] = ()) -> HeaderPolicy:
        return cls(None if allow is None else frozenset(allow), frozenset(deny))

    def carries(self, name: str) -> bool:
        if name in ALWAYS_CARRIED:
            return True
        if name in self.deny or name.startswith(MODEL_HEADER_PREFIX):
            return False
        return self.allow is None or name in self.allow

    def carried(self, headers: Iterable[tuple[str, bytes | None]]) -> Headers:
        return [
            (name, value) for name, value in headers if value is not None and self.carries(name)
        ]


@functools.lru_cache(maxsize=64)
def _model_headers(name: str, version: int, mode: str) -> tuple[tuple[str, bytes], ...]:
    return (
        (f"{MODEL_HEADER_PREFIX}name", name.encode()),
        (f"{MODEL_HEADER_PREFIX}version", str(version).encode()),
        (f"{MODEL_HEADER_PREFIX}mode", mode.encode()),
    )


def observe_all(histogram: Histogram, values: Sequence[float]) -> None:
    """``histogram.observe`` for each value, in one pass: the buckets and the sum are
    incremented once per call (prometheus_client's observe costs a lock per value)."""
    if not values:
        return
    buckets = getattr(histogram, "_buckets", None)
    bounds = getattr(histogram, "_upper_bounds", None)
    total = getattr(histogram, "_sum", None)
    if buckets is None or bounds is None or total is None:  # another client version
        for value in values:
            histogram.observe(value)
        return
    indices = np.searchsorted(np.asarray(bounds), np.asarray(values), side="left")
    for index, count in enumerate(np.bincount(indices).tolist()):
        if count:
            buckets[index].inc(count)
    total.inc(float(sum(values)))


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
        headers: HeaderPolicy | None = None,
        routed_partitions: Mapping[str, int] | None = None,
    ) -> None:
        """``headers``: which input headers outputs carry (default: the trace context
        only; the processor passes its configured policy, which carries all by default).
        ``routed_partitions``: partition count of each topic a codec may route to."""
        self.sink = sink
        self.output_topic = output_topic
        self.dlq_topic = dlq_topic
        self.output_partitions = max(1, output_partitions)
        self.partitioning = partitioning
        self.metrics = metrics
        self.headers = headers or HeaderPolicy(allow=frozenset())
        self.partitions = {topic: max(1, n) for topic, n in (routed_partitions or {}).items()}
        self.partitions[output_topic] = self.output_partitions

    def write(self, work: Work, now_ms: float) -> None:
        self.write_all([work], now_ms)

    def write_all(self, works: Iterable[Work], now_ms: float) -> None:
        """Produce handled works in the order given; metrics are updated once per call."""
        produced: Counter[str] = Counter()
        latencies: list[float] = []
        produce = self._produce
        carried = self.headers.carried
        output_topic = self.output_topic
        by_key = self.partitioning == "key"
        partitions = self.output_partitions
        model: tuple[tuple[str, bytes], ...] = ()
        model_of: tuple[str, int, str] = ("", 0, "")
        try:
            for work in works:
                record = work.record
                output = work.output
                if work.error is not None:
                    self.dead_letter(record, work.error)
                elif type(output) is not bytes:  # an OutputRecord, or None (no value)
                    if self._output(work):
                        produced[work.mode] += 1
                else:  # the common case of _output, inlined (this is the hot path)
                    if (work.model_name, work.model_version, work.mode) != model_of:
                        model_of = (work.model_name, work.model_version, work.mode)
                        model = _model_headers(*model_of) if work.model_name else ()
                    headers: Headers | None = (
                        [*carried(record.headers), *model]
                        if record.headers
                        else (list(model) or None)
                    )
                    partition = None if by_key else record.partition % partitions
                    if produce(record, output_topic, output, record.key, headers, partition):
                        produced[work.mode] += 1
                if record.timestamp_ms is not None:
                    latencies.append(max(0.0, now_ms - record.timestamp_ms) / 1000)
        finally:
            self._count(produced)
            observe_all(self.metrics.e2e_latency, latencies)

    def _count(self, produced: Counter[str]) -> None:
        for mode, count in produced.items():
            self.metrics.records_out.labels(mode).inc(count)
        if produced["fallback"]:
            self.metrics.fallback_records.inc(produced["fallback"])

    def _output(self, work: Work) -> bool:
        """Produce the output (True), or dead-letter it when it cannot be (False)."""
        record = work.record
        output = work.output
        if isinstance(output, OutputRecord):
            value, key, topic, extra = self._unpack(record, output)
            if topic not in self.partitions:
                reason = f"the codec routed the output to {topic!r}, not in its output_topics"
                self.dead_letter(record, RecordError("route", reason))
                return False
        else:
            value, key, topic, extra = output, record.key, self.output_topic, ()
        model = (
            _model_headers(work.model_name, work.model_version, work.mode)
            if work.model_name
            else ()
        )
        if record.headers or extra:  # carried input headers, streamserve.model.*, the codec's
            headers: Headers | None = [*self.headers.carried(record.headers), *model, *extra]
        else:
            headers = list(model) or None
        return self._produce(record, topic, value, key, headers, self._partition(record, topic))

    def _produce(
        self,
        record: InputRecord,
        topic: str,
        value: bytes | None,
        key: bytes | None,
        headers: Headers | None,
        partition: int | None,
    ) -> bool:
        """Produce one output (True), or dead-letter its input when Kafka refuses it."""
        try:
            self.sink.produce(topic, value, key, headers, partition)
        except KafkaException as exc:  # e.g. the output is larger than message.max.bytes
            error = exc.args[0] if exc.args else exc
            self.dead_letter(
                record, RecordError("produce", f"output refused: {error}", "KafkaException")
            )
            return False
        return True

    def _unpack(
        self, record: InputRecord, output: OutputRecord
    ) -> tuple[bytes | None, bytes | None, str, Sequence[tuple[str, bytes]]]:
        """(value, key, topic, codec headers) of an :class:`OutputRecord`."""
        key = record.key if output.key is SameKey.INPUT else output.key
        return output.value, key, output.topic or self.output_topic, output.headers

    def _partition(self, record: InputRecord, topic: str) -> int | None:
        if self.partitioning == "key":
            return None  # Kafka's default partitioner on the key
        return record.partition % self.partitions[topic]

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
