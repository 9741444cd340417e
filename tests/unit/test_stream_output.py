"""OutputWriter: outputs, DLQ records and their headers (a recording sink, no broker)."""

from __future__ import annotations

from confluent_kafka import KafkaError, KafkaException

from streamserve.stream.codecs import InputRecord
from streamserve.stream.errors import RecordError
from streamserve.stream.output import OutputWriter, dlq_headers
from streamserve.stream.pipeline import PartitionBook
from streamserve.stream.telemetry import StreamMetrics


class RecordingSink:
    def __init__(self, refuse_larger_than: int | None = None) -> None:
        self.sent: list[tuple] = []
        self.limit = refuse_larger_than

    def produce(self, topic, value, key, headers=None, partition=None) -> None:
        if self.limit is not None and value is not None and len(value) > self.limit:
            raise KafkaException(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE))
        self.sent.append((topic, value, key, dict(headers or []), partition))


def work(partition: int = 3, offset: int = 9, value: bytes = b"in"):
    book = PartitionBook()
    book.assign([("in", partition)])
    return book.intake(
        InputRecord("in", partition, offset, b"key", value, [("trace", b"t1")], timestamp_ms=1000)
    )


def writer(sink: RecordingSink, partitioning: str = "input") -> OutputWriter:
    return OutputWriter(sink, "out", "dlq", 2, partitioning, StreamMetrics())  # type: ignore[arg-type]


def test_output_keeps_the_key_and_maps_the_partition() -> None:
    sink = RecordingSink()
    item = work(partition=3)
    item.succeed(b"prediction", "remote")
    writer(sink).write(item, now_ms=1500)
    assert sink.sent == [("out", b"prediction", b"key", {}, 1)]  # 3 % 2 output partitions
    item.succeed(b"prediction", "remote")
    writer(sink, "key").write(item, now_ms=1500)
    assert sink.sent[-1][4] is None


def test_failed_record_goes_to_the_dlq_with_original_value_and_error_headers() -> None:
    sink = RecordingSink()
    item = work()
    try:
        raise FileNotFoundError("x")
    except FileNotFoundError as cause:
        error = RecordError("fetch", "file not found: 'x'")
        error.__cause__ = cause
    item.fail(error)
    writer(sink).write(item, now_ms=1500)
    topic, value, key, headers, _ = sink.sent[0]
    assert (topic, value, key) == ("dlq", b"in", b"key")
    assert headers == {
        "trace": b"t1",
        "streamserve.error.stage": b"fetch",
        "streamserve.error.reason": b"file not found: 'x'",
        "streamserve.error.exception": b"FileNotFoundError",
        "streamserve.source.topic": b"in",
        "streamserve.source.partition": b"3",
        "streamserve.source.offset": b"9",
    }


def test_an_output_the_producer_refuses_becomes_a_dlq_record() -> None:
    sink = RecordingSink(refuse_larger_than=10)
    item = work()
    item.succeed(b"x" * 100, "embedded")
    writer(sink).write(item, now_ms=0)
    topic, value, _, headers, _ = sink.sent[0]
    assert topic == "dlq" and value == b"in"
    assert headers["streamserve.error.stage"] == b"produce"


def test_an_oversized_dlq_value_is_dropped_but_the_reason_kept() -> None:
    sink = RecordingSink(refuse_larger_than=10)
    item = work(value=b"v" * 100)
    item.fail(RecordError("decode", "bad", "ValueError"))
    writer(sink).write(item, now_ms=0)
    topic, value, _, headers, _ = sink.sent[0]
    assert topic == "dlq" and value is None
    assert headers["streamserve.error.value-dropped"] == b"true"
    assert dlq_headers(item.record, RecordError("s", "r"))[-1] == (
        "streamserve.source.offset",
        b"9",
    )
