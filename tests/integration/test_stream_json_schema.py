"""JSON Schema records against a real Apicurio Registry: confluent-kafka's JSONSerializer
writes them, the format resolves, decodes and encodes them, JSONDeserializer reads the
outputs back, and the output subject is listed through the registry's REST API; then
the CLI end to end, with the registry and with a schema file (no registry).

What Apicurio Registry 3.3.3 accepts as BACKWARD for JSON Schema (checked here):
- an optional property added to a **closed** content model (``"additionalProperties":
  false``) is compatible, so the derived output schema registers as a new version;
- an added property in an **open** content model is not ("Object type property schemas
  narrowed"), for the input subject as for the output: the records of that input schema
  go to the DLQ with the registry's reason and a hint;
- drafts 2019-09 and 2020-12 cannot be checked at all (HTTP 500 "could not determine
  version"): the format names the cause instead of reporting the registry unavailable.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.json_schema import JSONDeserializer, JSONSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from streamserve.stream.codecs.formats import FormatOptions, OutputLayout, PredictionField
from streamserve.stream.codecs.json_schema import JsonSchemaFormat, create
from streamserve.stream.codecs.registry import Registry, RegistrySettings, wire_header
from streamserve.stream.errors import DependencyUnavailable, RecordError
from streamserve.testing import StreamProcess, produce, read_topic
from tests.helpers import build_tiny_model

pytestmark = pytest.mark.integration

# The serdes' default (ASSOCIATED) asks the registry's associations API, which Apicurio
# lacks: its 404 answers, and about 1 in 100 of them never arrives.
TOPIC_STRATEGY = {"subject.name.strategy.type": "TOPIC"}
FIELDS = (PredictionField("score", "double"), PredictionField("label", "long"))


def txn_schema(closed: bool = True, *extra: str, draft: str | None = None) -> dict[str, Any]:
    schema: dict[str, Any] = {
        "$schema": draft or "http://json-schema.org/draft-07/schema#",
        "title": "Transaction",
        "type": "object",
        "properties": {
            "id": {"type": "string"},
            "amount": {"type": "number", "minimum": 0},
            "merchant": {
                "type": "object",
                "properties": {"category": {"type": "string"}},
                "required": ["category"],
            },
        },
        "required": ["id", "amount", "merchant"],
    }
    for name in extra:
        schema["properties"][name] = {"type": "string"}
    if closed:
        schema["additionalProperties"] = False
    return schema


class CountingRegistry(Registry):
    """The real registry client, counting the schema fetches it answered."""

    fetches: list[int]

    def schema(self, schema_id: int, fmt: str | None = None) -> Schema | None:
        schema = super().schema(schema_id, fmt)
        self.fetches.append(schema_id)  # answered (a retried fetch counts once)
        return schema


class Topics:
    """Unique subject names (no Kafka needed: the serializers run without a producer)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.input = f"js-{uuid.uuid4().hex[:10]}"
        self.output = f"{self.input}-out"
        self.client = SchemaRegistryClient({"url": url, "timeout": 10})
        self.input_ctx = SerializationContext(self.input, MessageField.VALUE)
        self.output_ctx = SerializationContext(self.output, MessageField.VALUE)

    def writer(self, schema: dict[str, Any]) -> JSONSerializer:
        return JSONSerializer(json.dumps(schema), self.client, conf=TOPIC_STRATEGY)

    def reader(self) -> JSONDeserializer:
        return JSONDeserializer(None, schema_registry_client=self.client, conf=TOPIC_STRATEGY)

    def fmt(self, layout: OutputLayout | None = None) -> tuple[JsonSchemaFormat, CountingRegistry]:
        registry = CountingRegistry(RegistrySettings(self.url))
        registry.fetches = []
        options = FormatOptions(layout or OutputLayout(FIELDS), self.output, registry)
        return create(options), registry

    def rest(self, path: str) -> Any:
        response = httpx.get(f"{self.url}{path}", timeout=10)
        response.raise_for_status()
        return response.json()


@pytest.fixture
def registry_url(request: pytest.FixtureRequest) -> str:
    """The session's real registry (tests/conftest.py's ``schema_registry_url``)."""
    try:
        return str(request.getfixturevalue("schema_registry_url"))
    except pytest.FixtureLookupError:
        pytest.skip("no schema_registry_url fixture (the registry launcher) in this checkout")


@pytest.fixture
def topics(registry_url: str) -> Iterator[Topics]:
    yield Topics(registry_url)


def resolve(fmt: JsonSchemaFormat, values: list[Any]) -> None:
    """``fmt.resolve`` as the processor calls it: again when the registry did not answer
    (Apicurio now and then never sends a 404's answer, see TOPIC_STRATEGY)."""
    for attempt in range(3):
        try:
            fmt.resolve(values)
            return
        except DependencyUnavailable:
            if attempt == 2:
                raise


def records(count: int, **extra: Any) -> list[dict[str, Any]]:
    return [
        {"id": f"t{i}", "amount": 1.5 * i, "merchant": {"category": "food"}, **extra}
        for i in range(count)
    ]


def test_round_trip_with_confluent_serdes_and_the_output_subject(topics: Topics) -> None:
    serialize = topics.writer(txn_schema())
    inputs = records(20)
    values = [serialize(record, topics.input_ctx) for record in inputs]
    fmt, registry = topics.fmt()

    assert fmt.needs_resolve(values)
    resolve(fmt, values)
    assert not fmt.needs_resolve(values)
    resolve(fmt, values)
    assert len(registry.fetches) == 1  # one registry call per new schema id, never per record

    read = topics.reader()
    for record, value in zip(inputs, values, strict=True):
        decoded, key = fmt.decode(value)
        assert decoded == record
        output = {**decoded, "score": 0.25, "label": 1}
        assert read(fmt.encode(output, key), topics.output_ctx) == output

    subject = f"{topics.output}-value"
    assert subject in topics.rest("/subjects")
    latest = topics.rest(f"/subjects/{subject}/versions/latest")
    assert latest["schemaType"] == "JSON"
    assert json.loads(latest["schema"]) == json.loads(fmt.output_schema_text(key) or "")
    assert json.loads(latest["schema"])["required"][-2:] == ["score", "label"]
    assert topics.rest(f"/config/{subject}")["compatibilityLevel"] == "BACKWARD"


def test_prediction_layout_registers_a_prediction_schema(topics: Topics) -> None:
    value = topics.writer(txn_schema())(records(1)[0], topics.input_ctx)
    fmt, _ = topics.fmt(OutputLayout(FIELDS, enriched=False))
    resolve(fmt, [value])
    decoded, key = fmt.decode(value)
    output = {"id": decoded["id"], "score": 0.5, "label": 0}
    read = topics.reader()
    assert read(fmt.encode(output, key), topics.output_ctx) == output
    schema = json.loads(topics.rest(f"/subjects/{topics.output}-value/versions/latest")["schema"])
    assert schema["title"] == "TransactionPrediction"
    assert list(schema["properties"]) == ["id", "score", "label"]


def test_an_added_optional_property_registers_a_new_compatible_output_version(
    topics: Topics,
) -> None:
    v1 = topics.writer(txn_schema())(records(1)[0], topics.input_ctx)
    fmt, registry = topics.fmt()
    resolve(fmt, [v1])
    v2_record = records(1, channel="web")[0]
    v2 = topics.writer(txn_schema(True, "channel"))(v2_record, topics.input_ctx)
    assert v2[:5] != v1[:5]  # a new input schema id
    assert fmt.needs_resolve([v1, v2])
    resolve(fmt, [v1, v2])
    assert len(registry.fetches) == 2

    read = topics.reader()
    outputs = []
    for value in (v1, v2):
        decoded, key = fmt.decode(value)
        encoded = fmt.encode({**decoded, "score": 1.0, "label": 2}, key)
        outputs.append(encoded)
        assert read(encoded, topics.output_ctx) == {**decoded, "score": 1.0, "label": 2}
    assert outputs[0][:5] != outputs[1][:5]
    subject = f"{topics.output}-value"
    assert topics.rest(f"/subjects/{subject}/versions") == [1, 2]
    latest = json.loads(topics.rest(f"/subjects/{subject}/versions/latest")["schema"])
    assert "channel" in latest["properties"] and "channel" not in latest["required"]


def test_a_property_added_to_an_open_content_model_is_refused_with_the_reason(
    topics: Topics,
) -> None:
    v1 = topics.writer(txn_schema(closed=False))(records(1)[0], topics.input_ctx)
    v2 = topics.writer(txn_schema(False, "channel"))(records(1, channel="web")[0], topics.input_ctx)
    fmt, _ = topics.fmt()
    resolve(fmt, [v1, v2])
    decoded, key = fmt.decode(v1)
    fmt.encode({**decoded, "score": 1.0, "label": 2}, key)  # v1 goes on
    decoded, key = fmt.decode(v2)  # v2 decodes; its output cannot be registered
    with pytest.raises(RecordError) as caught:
        fmt.encode({**decoded, "score": 1.0, "label": 2}, key)
    reason = caught.value.reason
    assert caught.value.stage == "encode"
    assert "schema registry refused the output schema" in reason
    assert '"additionalProperties": false' in reason


def test_a_draft_the_registry_cannot_check_is_named_not_an_outage(topics: Topics) -> None:
    draft = "https://json-schema.org/draft/2020-12/schema"
    v1 = topics.writer(txn_schema(draft=draft))(records(1)[0], topics.input_ctx)
    v2 = topics.writer(txn_schema(True, "channel", draft=draft))(
        records(1, channel="web")[0], topics.input_ctx
    )
    fmt, _ = topics.fmt()
    resolve(fmt, [v1, v2])  # no DependencyUnavailable
    decoded, key = fmt.decode(v2)
    with pytest.raises(RecordError, match="checks JSON Schema drafts 4, 6 and 7 only"):
        fmt.encode({**decoded, "score": 1.0, "label": 2}, key)


def test_bad_records_are_record_errors_with_reasons(topics: Topics) -> None:
    good = topics.writer(txn_schema())(records(1)[0], topics.input_ctx)
    header = good[:5]
    avro_id = topics.client.register_schema(
        f"{topics.input}-avro",
        Schema(json.dumps({"type": "record", "name": "R", "fields": []}), "AVRO"),
    )
    unknown = wire_header(2_000_000_000) + b"{}"
    cases = {
        unknown: "unknown schema id 2000000000 (the registry has no such schema)",
        wire_header(avro_id) + b"{}": f"schema id {avro_id} is a AVRO schema, not a JSON "
        "Schema; use --input-format avro",
        b'{"id": "t1"}': "value is not in the Confluent wire format (magic byte 0 + schema id)",
        header + b"{oops": "value is not valid JSON after the wire header",
        header + b'{"id": "t1", "amount": -2, "merchant": {"category": "x"}}': (
            "does not match its writer schema (id "
        ),
        header + orjson.dumps({"id": "t1", "amount": 1, "merchant": {}}): (
            "at $.merchant: 'category' is a required property"
        ),
        None: "tombstone",
    }
    fmt, registry = topics.fmt()
    values = [good, *cases]
    resolve(fmt, values)
    assert not fmt.needs_resolve(values)
    resolve(fmt, values)
    assert sorted(registry.fetches) == sorted(
        {int.from_bytes(v[1:5], "big") for v in (good, unknown, wire_header(avro_id))}
    )
    for value, reason in cases.items():
        with pytest.raises(RecordError) as caught:
            fmt.decode(value)
        assert caught.value.stage == "decode"
        assert reason in caught.value.reason, caught.value.reason
    assert fmt.decode(good)[0] == records(1)[0]


def test_a_prediction_field_that_is_an_input_property_is_refused_naming_it(
    topics: Topics,
) -> None:
    value = topics.writer(txn_schema())(records(1)[0], topics.input_ctx)
    fmt, _ = topics.fmt(OutputLayout((PredictionField("amount", "double"),)))
    resolve(fmt, [value])
    decoded, key = fmt.decode(value)
    with pytest.raises(RecordError) as caught:
        fmt.encode({**decoded, "amount": 0.5}, key)
    assert "['amount'] are already properties of the input schema" in caught.value.reason
    assert "--output-field predicted_amount=" in caught.value.reason
    assert f"{topics.output}-value" not in topics.rest("/subjects")


# ------------------------------------------------------------------ the CLI, end to end

RECORDS = 120
WIDTH = 2


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory, width=WIDTH)


def test_cli_json_schema_in_enriched_out_exactly_once_across_a_schema_change(
    registry_url: str,
    kafka_bootstrap: str,
    topic_factory: Any,
    tiny_model: Path,
    tmp_path: Path,
) -> None:
    """JSONSerializer-framed transactions (v1, then v2 with an added optional property)
    through ``streamserve stream --input-format json-schema --output-format enriched``;
    JSONDeserializer reads every output back: fields kept, the model's answers, each
    record once; the unknown-id and unframed records in the DLQ with their reasons."""
    import onnxruntime

    source, sink = topic_factory(1, "jsin"), topic_factory(1, "jsout")
    topics = Topics(registry_url)
    topics.input, topics.output = source, sink
    topics.input_ctx = SerializationContext(source, MessageField.VALUE)
    topics.output_ctx = SerializationContext(sink, MessageField.VALUE)
    events = records(RECORDS // 2) + [
        {**event, "id": f"v2-{i}", "channel": "web"}
        for i, event in enumerate(records(RECORDS // 2))
    ]
    v1, v2 = topics.writer(txn_schema()), topics.writer(txn_schema(True, "channel"))
    values = [v1(e, topics.input_ctx) for e in events[: RECORDS // 2]]
    unknown = wire_header(2_000_000_001) + orjson.dumps(events[0])
    unframed = orjson.dumps(events[0])
    values += [unknown, unframed]
    values += [v2(e, topics.input_ctx) for e in events[RECORDS // 2 :]]
    produce(kafka_bootstrap, source, [(0, None, value) for value in values])
    args = [
        "--bootstrap-servers", kafka_bootstrap, "--input-topic", source, "--output-topic", sink,
        "--group-id", f"g-{source}", "--instance-id", "one", "--model-base-path",
        str(tiny_model), "--model-name", "tiny", "--guarantee", "exactly-once",
        "--input-format", "json-schema", "--schema-registry-url", registry_url,
        "--output-format", "enriched", "--feature", "x=amount,merchant.risk",
        "--feature-default", "merchant.risk=0.5",
        "--output-field", "score=y[0]", "--output-field", "scores=y",
        "--output-field", "model_version=$model_version",
    ]  # fmt: skip
    with StreamProcess(args, tmp_path / "stream.log") as stream:
        stream.wait_ready()
        outputs = read_topic(kafka_bootstrap, sink, RECORDS, timeout=90)
        dead = read_topic(kafka_bootstrap, f"{source}.dlq", 2, timeout=30)
    assert len(outputs) == RECORDS, stream.log_tail()

    read = topics.reader()
    documents = [read(output.value, topics.output_ctx) for output in outputs]
    assert sorted(d["id"] for d in documents) == sorted(e["id"] for e in events)  # 0 lost/dup
    session = onnxruntime.InferenceSession(str(tiny_model / "1" / "model.onnx"))
    x = np.array([[e["amount"], 0.5] for e in events], np.float32)
    expected = session.run(None, {"x": x})[0]
    for event, want, document in zip(events, expected, documents, strict=True):
        assert {k: document[k] for k in event} == event  # every input field kept
        assert document["model_version"] == 1
        assert document["score"] == pytest.approx(float(want[0]), abs=1e-4)
        np.testing.assert_allclose(document["scores"], want, atol=1e-4)

    subject = f"{sink}-value"
    assert topics.rest(f"/subjects/{subject}/versions") == [1, 2]
    latest = json.loads(topics.rest(f"/subjects/{subject}/versions/latest")["schema"])
    assert {"channel", "score", "scores", "model_version"} <= set(latest["properties"])
    assert [record.value for record in dead] == [unknown, unframed]
    reasons = [record.headers["streamserve.error.reason"].decode() for record in dead]
    assert "unknown schema id 2000000001 (the registry has no such schema)" in reasons[0]
    assert "not in the Confluent wire format" in reasons[1]


def test_cli_schema_file_mode_writes_plain_json_and_its_output_schema(
    kafka_bootstrap: str, topic_factory: Any, tiny_model: Path, tmp_path: Path
) -> None:
    """No registry: ``--input-schema`` validates plain and Confluent-framed values, outputs
    are plain JSON, and each one validates against the schema written to
    ``--output-schema``; a value the schema refuses goes to the DLQ naming the path."""
    from jsonschema.validators import validator_for

    source, sink = topic_factory(1, "jsfile"), topic_factory(1, "jsfileout")
    schema_path, output_path = tmp_path / "txn.json", tmp_path / "scored.json"
    schema_path.write_text(json.dumps(txn_schema()))
    events = records(20)
    values = [
        orjson.dumps(e) if i % 2 else wire_header(5) + orjson.dumps(e) for i, e in enumerate(events)
    ]
    refused = orjson.dumps({**events[0], "amount": -1})
    produce(kafka_bootstrap, source, [(0, None, value) for value in [*values, refused]])
    args = [
        "--bootstrap-servers", kafka_bootstrap, "--input-topic", source, "--output-topic", sink,
        "--group-id", f"g-{source}", "--instance-id", "one", "--model-base-path",
        str(tiny_model), "--model-name", "tiny", "--input-format", "json-schema",
        "--input-schema", str(schema_path), "--output-schema", str(output_path),
        "--output-format", "enriched", "--feature", "x=amount,merchant.risk",
        "--feature-default", "merchant.risk=0.5", "--output-field", "score=y[0]",
    ]  # fmt: skip
    with StreamProcess(args, tmp_path / "stream.log") as stream:
        stream.wait_ready()
        outputs = read_topic(kafka_bootstrap, sink, len(events), timeout=90)
        dead = read_topic(kafka_bootstrap, f"{source}.dlq", 1, timeout=30)
    assert len(outputs) == len(events), stream.log_tail()
    written = json.loads(output_path.read_text())
    assert written["required"][-1] == "score"
    validator = validator_for(written)(written)
    for event, output in zip(events, outputs, strict=True):
        document = output.json()  # plain JSON: no wire header
        validator.validate(document)
        assert {k: document[k] for k in event} == event
    assert [record.value for record in dead] == [refused]
    reason = dead[0].headers["streamserve.error.reason"].decode()
    assert "at $.amount: -1 is less than the minimum of 0" in reason
