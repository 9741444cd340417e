"""Output keys, carried headers and codec routing (a recording sink, no broker)."""

from __future__ import annotations

from streamserve.stream.codecs import InputRecord, OutputRecord
from streamserve.stream.output import HeaderPolicy, OutputWriter
from streamserve.stream.pipeline import PartitionBook, Work
from streamserve.stream.telemetry import StreamMetrics

INPUT_HEADERS = [
    ("traceparent", b"00-abc-def-01"),
    ("tenant", b"acme"),
    ("secret", b"s"),
    ("streamserve.model.name", b"upstream"),
]


class RecordingSink:
    def __init__(self) -> None:
        self.sent: list[tuple] = []

    def produce(self, topic, value, key, headers=None, partition=None) -> None:  # type: ignore[no-untyped-def]
        self.sent.append((topic, value, key, list(headers or []), partition))


def handled(output: bytes | OutputRecord) -> Work:
    book = PartitionBook()
    book.assign([("in", 3)])
    work = book.intake(InputRecord("in", 3, 0, b"key", b"v", INPUT_HEADERS))
    assert work is not None
    work.succeed(output, "embedded", "tiny", 2)
    return work


def writer(sink: RecordingSink, policy: HeaderPolicy) -> OutputWriter:
    return OutputWriter(
        sink,  # type: ignore[arg-type]
        "out",
        "dlq",
        2,
        "input",
        StreamMetrics(),
        policy,
        {"review": 1},
    )


def test_outputs_carry_input_headers_and_name_the_model() -> None:
    sink = RecordingSink()
    writer(sink, HeaderPolicy.of(None, ["secret"])).write(handled(b"p"), now_ms=0)
    topic, value, key, headers, partition = sink.sent[0]
    assert (topic, value, key, partition) == ("out", b"p", b"key", 1)
    assert headers == [
        ("traceparent", b"00-abc-def-01"),
        ("tenant", b"acme"),
        ("streamserve.model.name", b"tiny"),
        ("streamserve.model.version", b"2"),
        ("streamserve.model.mode", b"embedded"),
    ]


def test_an_allowlist_still_keeps_the_trace_context() -> None:
    sink = RecordingSink()
    writer(sink, HeaderPolicy.of([])).write(handled(b"p"), now_ms=0)
    names = [name for name, _ in sink.sent[0][3]]
    assert names[0] == "traceparent" and "tenant" not in names


def test_a_codec_sets_key_headers_and_a_declared_topic() -> None:
    sink = RecordingSink()
    output = OutputRecord(b"low", key=b"k2", headers=[("why", b"low score")], topic="review")
    writer(sink, HeaderPolicy()).write(handled(output), now_ms=0)
    topic, value, key, headers, partition = sink.sent[0]
    assert (topic, value, key, partition) == ("review", b"low", b"k2", 0)
    assert headers[-1] == ("why", b"low score")


def test_an_undeclared_topic_sends_the_record_to_the_dlq() -> None:
    sink = RecordingSink()
    writer(sink, HeaderPolicy()).write(handled(OutputRecord(b"x", topic="elsewhere")), now_ms=0)
    topic, value, _, headers, _ = sink.sent[0]
    assert (topic, value) == ("dlq", b"v")
    assert ("streamserve.error.stage", b"route") in headers
