"""Avro records against a real Apicurio Registry: confluent-kafka's AvroSerializer writes
them as a producer would, the format resolves, decodes and encodes them (no registry call
per record: proven with the registry's HTTP client blocked after ``resolve``),
AvroDeserializer reads the outputs back, and the output subject and its versions are
listed through the registry's REST API; then the CLI end to end (the issue's acceptance:
N records in, N enriched out, exactly-once; the input schema evolving while it runs;
unknown ids and unframed values in the DLQ), and the schema-file mode without a registry.
"""

from __future__ import annotations

import copy
import io
import json
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from confluent_kafka.schema_registry import Schema, SchemaReference, SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext
from fastavro import parse_schema, schemaless_reader, schemaless_writer

from streamserve.stream.codecs.avro import AvroFormat, create
from streamserve.stream.codecs.formats import FormatOptions, OutputLayout, PredictionField
from streamserve.stream.codecs.registry import Registry, RegistrySettings, wire_header
from streamserve.stream.errors import DependencyUnavailable, RecordError
from streamserve.testing import StreamProcess, produce, read_topic
from tests.helpers import build_tiny_model

pytestmark = pytest.mark.integration

# The serdes' default (ASSOCIATED) asks the registry's associations API, which Apicurio
# lacks: its 404 answers, and about 1 in 100 of them never arrives.
TOPIC_STRATEGY = {"subject.name.strategy.type": "TOPIC"}
FIELDS = (
    PredictionField("score", "double"),
    PredictionField("scores", "double", repeated=True),
    PredictionField("label", "long"),
)
PREDICTED = {"score": 0.25, "scores": [0.25, 0.75], "label": 1}


def txn_schema(*optional: str) -> dict[str, Any]:
    """A transaction with a nested record; ``optional``: added ``["null", "string"]``
    fields, default null (a BACKWARD-compatible evolution)."""
    schema: dict[str, Any] = {
        "type": "record",
        "name": "Transaction",
        "namespace": "shop.events",
        "fields": [
            {"name": "id", "type": "string"},
            {"name": "amount", "type": "double"},
            {"name": "age", "type": "int"},
            {
                "name": "merchant",
                "type": {
                    "type": "record",
                    "name": "Merchant",
                    "fields": [
                        {"name": "category", "type": "string"},
                        {"name": "risk", "type": "double"},
                    ],
                },
            },
        ],
    }
    for name in optional:
        schema["fields"].append({"name": name, "type": ["null", "string"], "default": None})
    return schema


def records(count: int, prefix: str = "t", **extra: Any) -> list[dict[str, Any]]:
    return [
        {
            "id": f"{prefix}{i}",
            "amount": 1.5 * i,
            "age": 20 + i % 50,
            "merchant": {"category": "food" if i % 2 else "travel", "risk": i / 100},
            **extra,
        }
        for i in range(count)
    ]


class CountingRegistry(Registry):
    """The real registry client, counting the schema fetches it answered."""

    fetches: list[int]

    def schema(self, schema_id: int, fmt: str | None = None) -> Schema | None:
        schema = super().schema(schema_id, fmt)
        self.fetches.append(schema_id)  # answered (a retried fetch counts once)
        return schema


class Topics:
    """Unique subject names (no Kafka needed: the serializers run without a producer)."""

    def __init__(self, url: str, name: str | None = None, output: str | None = None) -> None:
        self.url = url
        self.input = name or f"avro-{uuid.uuid4().hex[:10]}"
        self.output = output or f"{self.input}-out"
        self.client = SchemaRegistryClient({"url": url, "timeout": 10})
        self.input_ctx = SerializationContext(self.input, MessageField.VALUE)
        self.output_ctx = SerializationContext(self.output, MessageField.VALUE)

    def writer(self, schema: dict[str, Any]) -> AvroSerializer:
        return AvroSerializer(self.client, json.dumps(schema), conf=TOPIC_STRATEGY)

    def reader(self) -> AvroDeserializer:
        return AvroDeserializer(self.client, conf=TOPIC_STRATEGY)

    def fmt(
        self, layout: OutputLayout | None = None, url: str | None = None, **options: Any
    ) -> tuple[AvroFormat, CountingRegistry]:
        registry = CountingRegistry(RegistrySettings(url or self.url))
        registry.fetches = []
        layout = layout or OutputLayout(FIELDS)
        return create(FormatOptions(layout, self.output, registry, **options)), registry

    def rest(self, path: str) -> Any:
        response = httpx.get(f"{self.url}{path}", timeout=10)
        response.raise_for_status()
        return response.json()


@pytest.fixture
def registry_url(request: pytest.FixtureRequest) -> str:
    """The session's real registry (tests/conftest.py's ``schema_registry_url``)."""
    return str(request.getfixturevalue("schema_registry_url"))


@pytest.fixture
def topics(registry_url: str) -> Iterator[Topics]:
    yield Topics(registry_url)


def resolve(fmt: AvroFormat, values: list[Any]) -> None:
    """``fmt.resolve`` as the processor calls it: again when the registry did not answer
    (Apicurio now and then never sends a 404's answer, see TOPIC_STRATEGY)."""
    for attempt in range(3):
        try:
            fmt.resolve(values)
            return
        except DependencyUnavailable:
            if attempt == 2:
                raise


def test_round_trip_with_confluent_serdes_and_the_output_subject(topics: Topics) -> None:
    serialize = topics.writer(txn_schema())
    inputs = records(20)
    values = [serialize(record, topics.input_ctx) for record in inputs]
    fmt, registry = topics.fmt()

    assert fmt.needs_resolve(values)
    resolve(fmt, values)
    assert not fmt.needs_resolve(values)
    resolve(fmt, values)
    assert registry.fetches == [int.from_bytes(values[0][1:5], "big")]  # once per id

    read = topics.reader()
    for record, value in zip(inputs, values, strict=True):
        decoded, key = fmt.decode(value)
        assert decoded == record
        output = {**decoded, **PREDICTED}
        assert read(fmt.encode(output, key), topics.output_ctx) == output

    subject = f"{topics.output}-value"
    assert subject in topics.rest("/subjects")
    assert topics.rest(f"/subjects/{subject}/versions") == [1]
    latest = topics.rest(f"/subjects/{subject}/versions/latest")
    assert latest.get("schemaType", "AVRO") == "AVRO"
    schema = json.loads(latest["schema"])
    assert schema == json.loads(fmt.output_schema_text(key) or "")
    assert (schema["name"], schema["namespace"]) == ("Transaction", "shop.events")
    assert [f["name"] for f in schema["fields"]] == [
        "id",
        "amount",
        "age",
        "merchant",
        "score",
        "scores",
        "label",
    ]
    assert schema["fields"][-2]["type"] == {"type": "array", "items": "double"}
    assert topics.rest(f"/config/{subject}")["compatibilityLevel"] == "BACKWARD"


def test_decode_and_encode_make_no_registry_call(
    topics: Topics, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After ``resolve``, the registry's HTTP client and every new connection are blocked:
    records still decode and encode; only a new schema id needs the registry."""
    from confluent_kafka.schema_registry.common._httpx_compat import httpx as client_httpx

    v1 = topics.writer(txn_schema())
    values = [v1(record, topics.input_ctx) for record in records(50)]
    fmt, _ = topics.fmt()
    resolve(fmt, values)
    v2 = topics.writer(txn_schema("channel"))(records(1, channel="web")[0], topics.input_ctx)

    calls: list[str] = []

    def blocked_send(self: Any, request: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(str(request.url))
        raise client_httpx.ConnectError("blocked by the test", request=request)

    def blocked_connect(self: socket.socket, address: Any) -> None:
        calls.append(f"connect {address}")
        raise ConnectionRefusedError("blocked by the test")

    monkeypatch.setattr(client_httpx.Client, "send", blocked_send)
    monkeypatch.setattr(socket.socket, "connect", blocked_connect)
    _, first_key = fmt.decode(values[0])
    output_schema = parse_schema(json.loads(fmt.output_schema_text(first_key) or "{}"))
    for record, value in zip(records(50), values, strict=True):
        decoded, key = fmt.decode(value)
        encoded = fmt.encode({**decoded, **PREDICTED}, key)
        assert schemaless_reader(io.BytesIO(encoded[5:]), output_schema, None) == {
            **record,
            **PREDICTED,
        }
    assert calls == []

    assert fmt.needs_resolve([*values, v2])  # a new id: only resolve asks the registry
    with pytest.raises(DependencyUnavailable, match="blocked by the test"):
        fmt.resolve([*values, v2])
    assert calls
    assert fmt.needs_resolve([v2])  # nothing remembered about it: the next batch asks again


def test_prediction_layout_registers_a_prediction_record(topics: Topics) -> None:
    value = topics.writer(txn_schema())(records(1)[0], topics.input_ctx)
    fmt, _ = topics.fmt(OutputLayout(FIELDS, enriched=False))
    resolve(fmt, [value])
    decoded, key = fmt.decode(value)
    output = {"id": decoded["id"], **PREDICTED}
    assert topics.reader()(fmt.encode(output, key), topics.output_ctx) == output
    latest = topics.rest(f"/subjects/{topics.output}-value/versions/latest")
    schema = json.loads(latest["schema"])
    assert (schema["name"], schema["namespace"]) == ("TransactionPrediction", "shop.events")
    assert [f["name"] for f in schema["fields"]] == ["id", "score", "scores", "label"]


def test_record_name_strategy_names_the_subject_after_the_output_record(
    topics: Topics,
) -> None:
    value = topics.writer(txn_schema())(records(1)[0], topics.input_ctx)
    fmt, _ = topics.fmt(OutputLayout(FIELDS, enriched=False), subject_strategy="record")
    resolve(fmt, [value])
    decoded, key = fmt.decode(value)
    fmt.encode({"id": decoded["id"], **PREDICTED}, key)
    assert "shop.events.TransactionPrediction" in topics.rest("/subjects")


def test_an_added_optional_field_registers_a_new_compatible_output_version(
    topics: Topics,
) -> None:
    v1 = topics.writer(txn_schema())(records(1)[0], topics.input_ctx)
    fmt, registry = topics.fmt()
    resolve(fmt, [v1])
    v2_record = records(1, channel="web")[0]
    v2 = topics.writer(txn_schema("channel"))(v2_record, topics.input_ctx)
    assert v2[:5] != v1[:5]  # a new input schema id
    assert fmt.needs_resolve([v1, v2])
    resolve(fmt, [v1, v2])  # the same format: no restart
    assert len(registry.fetches) == 2

    read = topics.reader()
    outputs = []
    for value in (v1, v2):
        decoded, key = fmt.decode(value)
        encoded = fmt.encode({**decoded, **PREDICTED}, key)
        outputs.append(encoded)
        assert read(encoded, topics.output_ctx) == {**decoded, **PREDICTED}
    assert fmt.decode(v2)[0] == v2_record
    assert outputs[0][:5] != outputs[1][:5]  # output v1 and v2
    subject = f"{topics.output}-value"
    assert topics.rest(f"/subjects/{subject}/versions") == [1, 2]
    latest = json.loads(topics.rest(f"/subjects/{subject}/versions/latest")["schema"])
    channel = next(f for f in latest["fields"] if f["name"] == "channel")
    assert channel == {"name": "channel", "type": ["null", "string"], "default": None}


def test_a_schema_with_references_decodes_and_its_output_keeps_them(topics: Topics) -> None:
    merchant = txn_schema()["fields"][3]["type"] | {"namespace": "shop.events"}
    merchant_subject = f"{topics.input}-merchant"
    topics.client.register_schema(merchant_subject, Schema(json.dumps(merchant), "AVRO"))
    schema = txn_schema()
    schema["fields"][3]["type"] = "shop.events.Merchant"
    reference = SchemaReference("shop.events.Merchant", merchant_subject, 1)
    topics.client.register_schema(
        f"{topics.input}-value", Schema(json.dumps(schema), "AVRO", [reference])
    )
    serialize = AvroSerializer(
        topics.client,
        None,
        conf={**TOPIC_STRATEGY, "auto.register.schemas": False, "use.latest.version": True},
    )
    record = records(1)[0]
    value = serialize(record, topics.input_ctx)
    fmt, _ = topics.fmt()
    resolve(fmt, [value])
    decoded, key = fmt.decode(value)
    assert decoded == record
    output = {**decoded, **PREDICTED}
    assert topics.reader()(fmt.encode(output, key), topics.output_ctx) == output
    latest = topics.client.get_latest_version(f"{topics.output}-value")
    assert [r.subject for r in latest.schema.references] == [merchant_subject]


JSON_SCHEMA = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "title": "Note",
    "type": "object",
    "properties": {"text": {"type": "string"}},
}


def test_bad_records_are_record_errors_with_reasons(topics: Topics) -> None:
    good = topics.writer(txn_schema())(records(1)[0], topics.input_ctx)
    header = good[:5]
    json_id = topics.client.register_schema(
        f"{topics.input}-json", Schema(json.dumps(JSON_SCHEMA), "JSON")
    )
    enum = {"type": "enum", "name": "Color", "symbols": ["RED", "GREEN"]}
    enum_id = topics.client.register_schema(
        f"{topics.input}-enum", Schema(json.dumps(enum), "AVRO")
    )
    unknown = wire_header(2_000_000_000) + good[5:]
    cases: dict[bytes | None, str] = {
        unknown: "unknown schema id 2000000000 (the registry has no such schema)",
        wire_header(json_id) + b"{}": f"schema id {json_id} is a JSON schema, not Avro; use "
        "--input-format json-schema",
        wire_header(enum_id) + b"\x02": f'schema id {enum_id} is an Avro "enum", not a record',
        good[5:]: "value is not in the Confluent wire format (magic byte 0 + schema id)",
        b"\x00\x00": "value is not in the Confluent wire format",
        good[:-4]: "value does not parse as Avro with its writer schema (id ",
        header + b"\xff": "value does not parse as Avro with its writer schema",
        good + b"\x02\x02": "2 byte(s) left after the record",
        None: "tombstone",
    }
    fmt, registry = topics.fmt()
    values = [good, *cases]
    resolve(fmt, values)
    assert not fmt.needs_resolve(values)
    resolve(fmt, values)
    ids = {int.from_bytes(v[1:5], "big") for v in values if v and len(v) >= 5 and v[0] == 0}
    assert sorted(registry.fetches) == sorted(ids)  # each id once, the unknown one too
    for value, reason in cases.items():
        with pytest.raises(RecordError) as caught:
            fmt.decode(value)
        assert caught.value.stage == "decode"
        assert reason in caught.value.reason, caught.value.reason
    assert fmt.decode(good)[0] == records(1)[0]


def test_a_prediction_field_that_is_an_input_field_is_refused_naming_it(
    topics: Topics,
) -> None:
    value = topics.writer(txn_schema())(records(1)[0], topics.input_ctx)
    fmt, _ = topics.fmt(OutputLayout((PredictionField("amount", "double"),)))
    resolve(fmt, [value])
    decoded, key = fmt.decode(value)
    with pytest.raises(RecordError) as caught:
        fmt.encode({**decoded, "amount": 0.5}, key)
    assert caught.value.stage == "encode"
    assert "['amount'] are already fields of the input schema" in caught.value.reason
    assert "--output-field predicted_amount=" in caught.value.reason
    assert f"{topics.output}-value" not in topics.rest("/subjects")


def test_an_output_schema_the_registry_refuses_is_an_encode_error(topics: Topics) -> None:
    """The output subject already holds a schema the derived one cannot read (BACKWARD):
    the records decode, their outputs carry the registry's refusal."""
    narrow = {"type": "record", "name": "Transaction", "fields": [{"name": "id", "type": "string"}]}
    topics.client.register_schema(f"{topics.output}-value", Schema(json.dumps(narrow), "AVRO"))
    value = topics.writer(txn_schema())(records(1)[0], topics.input_ctx)
    fmt, _ = topics.fmt()
    resolve(fmt, [value])
    decoded, key = fmt.decode(value)
    with pytest.raises(RecordError) as caught:
        fmt.encode({**decoded, **PREDICTED}, key)
    assert caught.value.stage == "encode"
    assert "schema registry refused the output schema" in caught.value.reason


def test_encode_refuses_a_value_the_output_schema_refuses(topics: Topics) -> None:
    value = topics.writer(txn_schema())(records(1)[0], topics.input_ctx)
    fmt, _ = topics.fmt()
    resolve(fmt, [value])
    decoded, key = fmt.decode(value)
    with pytest.raises(RecordError) as caught:
        fmt.encode({**decoded, **PREDICTED, "scores": ["high"]}, key)
    assert caught.value.stage == "encode"
    assert "shop.events.Transaction.scores" in caught.value.reason
    with pytest.raises(RecordError, match="no output schema for input schema id 12345"):
        fmt.encode({**decoded, **PREDICTED}, 12345)


# ------------------------------------------------------------------ the CLI, end to end

WIDTH = 3  # x = amount, age, merchant.risk


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory, width=WIDTH)


def cli_args(kafka: str, source: str, sink: str, model: Path, *extra: str) -> list[str]:
    return [
        "--bootstrap-servers", kafka, "--input-topic", source, "--output-topic", sink,
        "--group-id", f"g-{source}", "--instance-id", "one", "--model-base-path",
        str(model), "--model-name", "tiny", "--input-format", "avro",
        "--output-format", "enriched", "--feature", "x=amount,age,merchant.risk",
        "--output-field", "score=y[0]", "--output-field", "scores=y",
        "--output-field", "model_version=$model_version", *extra,
    ]  # fmt: skip


def expected_outputs(model: Path, events: list[dict[str, Any]]) -> np.ndarray:
    """The model's answers in process (ONNX Runtime, one batch)."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(model / "1" / "model.onnx"))
    x = np.array([[e["amount"], e["age"], e["merchant"]["risk"]] for e in events], np.float32)
    return np.asarray(session.run(None, {"x": x})[0])


def check_enriched(
    documents: list[dict[str, Any]], events: list[dict[str, Any]], model: Path
) -> None:
    """One output per event (0 lost, 0 duplicated), every input field kept, the
    predictions the model's own."""
    by_id = {d["id"]: d for d in documents}
    assert len(by_id) == len(documents) == len(events)
    assert set(by_id) == {e["id"] for e in events}
    for event, want in zip(events, expected_outputs(model, events), strict=True):
        document = by_id[event["id"]]
        assert {k: document[k] for k in event} == event  # every input field kept
        assert document["model_version"] == 1
        assert document["score"] == pytest.approx(float(want[0]), abs=1e-5)
        np.testing.assert_allclose(document["scores"], want, atol=1e-5)


def test_cli_avro_in_enriched_out_exactly_once(
    registry_url: str,
    kafka_bootstrap: str,
    topic_factory: Any,
    tiny_model: Path,
    tmp_path: Path,
) -> None:
    """The acceptance round trip: AvroSerializer-framed transactions (nested records)
    through ``streamserve stream --input-format avro --output-format enriched`` as the
    CLI; AvroDeserializer reads every output back (read_committed): each input once, every
    input field kept, the model's answers; the output subject and schema over REST."""
    count = 200
    source, sink = topic_factory(2, "avin"), topic_factory(2, "avout")
    topics = Topics(registry_url, source, sink)
    serialize = topics.writer(txn_schema())
    events = records(count)
    produce(
        kafka_bootstrap,
        source,
        [(i % 2, e["id"].encode(), serialize(e, topics.input_ctx)) for i, e in enumerate(events)],
    )
    args = cli_args(
        kafka_bootstrap,
        source,
        sink,
        tiny_model,
        "--guarantee",
        "exactly-once",
        "--schema-registry-url",
        registry_url,
    )
    with StreamProcess(args, tmp_path / "stream.log") as stream:
        stream.wait_ready()
        outputs = read_topic(kafka_bootstrap, sink, count, timeout=90)
    assert len(outputs) == count, stream.log_tail()

    read = topics.reader()
    documents = [read(output.value, topics.output_ctx) for output in outputs]
    check_enriched(documents, events, tiny_model)
    assert {o.key for o in outputs} == {e["id"].encode() for e in events}  # keys kept

    subject = f"{sink}-value"
    assert subject in topics.rest("/subjects")
    assert topics.rest(f"/subjects/{subject}/versions") == [1]
    schema = json.loads(topics.rest(f"/subjects/{subject}/versions/1")["schema"])
    assert schema["name"] == "Transaction"
    assert [f["name"] for f in schema["fields"]][-3:] == ["score", "scores", "model_version"]
    assert {int.from_bytes(o.value[1:5], "big") for o in outputs if o.value} == {
        topics.rest(f"/subjects/{subject}/versions/1")["id"]
    }


def test_cli_schema_evolution_while_running_and_bad_records_in_the_dlq(
    registry_url: str,
    kafka_bootstrap: str,
    topic_factory: Any,
    tiny_model: Path,
    tmp_path: Path,
) -> None:
    """v1 records, then (the processor running) v2 records with an added optional field,
    an unknown schema id and a value not in the wire format: v1 and v2 come out enriched
    (output subject versions 1 and 2), the two bad ones go to the DLQ with reasons."""
    source, sink = topic_factory(1, "avevo"), topic_factory(1, "avevout")
    topics = Topics(registry_url, source, sink)
    v1_events = records(40)
    v2_events = records(40, "v2-", channel="web")
    v1 = topics.writer(txn_schema())
    produce(kafka_bootstrap, source, [(0, None, v1(e, topics.input_ctx)) for e in v1_events])
    args = cli_args(
        kafka_bootstrap,
        source,
        sink,
        tiny_model,
        "--guarantee",
        "exactly-once",
        "--schema-registry-url",
        registry_url,
    )
    with StreamProcess(args, tmp_path / "stream.log") as stream:
        stream.wait_ready()
        first = read_topic(kafka_bootstrap, sink, len(v1_events), timeout=90, quiet_s=0.5)
        assert len(first) == len(v1_events), stream.log_tail()
        v2 = topics.writer(txn_schema("channel"))  # registered now: input version 2
        good = v1(v1_events[0], topics.input_ctx)
        unknown = wire_header(2_000_000_002) + good[5:]
        unframed = good[5:]
        values = [unknown, unframed, *(v2(e, topics.input_ctx) for e in v2_events)]
        produce(kafka_bootstrap, source, [(0, None, value) for value in values])
        total = len(v1_events) + len(v2_events)
        outputs = read_topic(kafka_bootstrap, sink, total, timeout=90)
        dead = read_topic(kafka_bootstrap, f"{source}.dlq", 2, timeout=30)
    assert len(outputs) == total, stream.log_tail()

    read = topics.reader()
    documents = [read(output.value, topics.output_ctx) for output in outputs]
    check_enriched(documents, v1_events + v2_events, tiny_model)
    subject = f"{sink}-value"
    assert topics.rest(f"/subjects/{subject}/versions") == [1, 2]
    latest = json.loads(topics.rest(f"/subjects/{subject}/versions/latest")["schema"])
    assert "channel" in [f["name"] for f in latest["fields"]]
    assert [record.value for record in dead] == [unknown, unframed]
    reasons = [record.headers["streamserve.error.reason"].decode() for record in dead]
    assert "unknown schema id 2000000002 (the registry has no such schema)" in reasons[0]
    assert "not in the Confluent wire format" in reasons[1]


def test_cli_schema_file_mode_writes_plain_avro_and_its_output_schema(
    kafka_bootstrap: str, topic_factory: Any, tiny_model: Path, tmp_path: Path
) -> None:
    """No registry: Avro written by fastavro (plain and Confluent-framed) through
    ``--input-schema``; the outputs are plain Avro that read back with the schema the
    processor wrote to ``--output-schema``; an unparsable value goes to the DLQ."""
    source, sink = topic_factory(1, "avfile"), topic_factory(1, "avfileout")
    schema_path, output_path = tmp_path / "txn.avsc", tmp_path / "scored.avsc"
    schema_path.write_text(json.dumps(txn_schema()))
    parsed = parse_schema(copy.deepcopy(txn_schema()))
    events = records(30)

    def plain(event: dict[str, Any]) -> bytes:
        buffer = io.BytesIO()
        schemaless_writer(buffer, parsed, event)
        return buffer.getvalue()

    values = [plain(e) if i % 2 else wire_header(9) + plain(e) for i, e in enumerate(events)]
    broken = plain(events[0])[:-3]
    produce(kafka_bootstrap, source, [(0, None, value) for value in [*values, broken]])
    args = cli_args(
        kafka_bootstrap,
        source,
        sink,
        tiny_model,
        "--input-schema",
        str(schema_path),
        "--output-schema",
        str(output_path),
    )
    with StreamProcess(args, tmp_path / "stream.log") as stream:
        stream.wait_ready()
        outputs = read_topic(kafka_bootstrap, sink, len(events), timeout=90)
        dead = read_topic(kafka_bootstrap, f"{source}.dlq", 1, timeout=30)
    assert len(outputs) == len(events), stream.log_tail()
    written = parse_schema(json.loads(output_path.read_text()))
    documents = []
    for output in outputs:
        assert output.value is not None
        buffer = io.BytesIO(output.value)  # plain Avro: no wire header
        documents.append(schemaless_reader(buffer, written, None))
        assert buffer.tell() == len(output.value)
    check_enriched(documents, events, tiny_model)
    assert [record.value for record in dead] == [broken]
    reason = dead[0].headers["streamserve.error.reason"].decode()
    assert "does not parse as Avro with the schema file" in reason
