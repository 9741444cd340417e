"""The JSON Schema format without a registry: schema derivation, schema-file mode, and the
checks that need no registry call. The registry path runs against a real Apicurio
Registry in tests/integration/test_stream_json_schema.py."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import orjson
import pytest

from streamserve.errors import InvalidArgument
from streamserve.stream.codecs.formats import (
    FormatOptions,
    OutputLayout,
    PredictionField,
    RecordFormat,
)
from streamserve.stream.codecs.json_schema import (
    JsonSchemaFormat,
    SchemaClash,
    create,
    derive_output_schema,
    field_schema,
)
from streamserve.stream.codecs.registry import Registry, RegistrySettings, wire_header
from streamserve.stream.errors import RecordError

FIELDS = (
    PredictionField("score", "double"),
    PredictionField("label", "long"),
    PredictionField("classes", "string", repeated=True),
    PredictionField("flagged", "boolean"),
)
ENRICHED = OutputLayout(FIELDS)
PREDICTION = OutputLayout(FIELDS, enriched=False)

TXN: dict[str, Any] = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "title": "Transaction",
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "id": {"type": "string"},
        "amount": {"type": "number", "minimum": 0},
        "merchant": {
            "type": "object",
            "properties": {"category": {"type": "string"}, "risk": {"type": "number"}},
            "required": ["category"],
        },
        "note": {"type": "string"},
    },
    "required": ["id", "amount", "merchant"],
}
RECORD = {"id": "t1", "amount": 12.5, "merchant": {"category": "food", "risk": 0.2}}
PREDICTED = {"score": 0.75, "label": 1, "classes": ["a", "b"], "flagged": False}


def file_format(
    tmp_path: Path, schema: object = TXN, layout: OutputLayout = ENRICHED
) -> JsonSchemaFormat:
    path = tmp_path / "in.json"
    path.write_text(json.dumps(schema))
    return create(
        FormatOptions(layout, "out", input_schema=path, output_schema=tmp_path / "out.json")
    )


# ------------------------------------------------------------------ output schemas


def test_field_schemas_by_kind_and_repetition() -> None:
    assert field_schema(PredictionField("a", "double")) == {"type": "number"}
    assert field_schema(PredictionField("a", "long")) == {"type": "integer"}
    assert field_schema(PredictionField("a", "string")) == {"type": "string"}
    assert field_schema(PredictionField("a", "boolean")) == {"type": "boolean"}
    assert field_schema(PredictionField("a", "double", repeated=True)) == {
        "type": "array",
        "items": {"type": "number"},
    }


def test_enriched_schema_is_the_writer_schema_plus_required_fields() -> None:
    output = derive_output_schema(TXN, ENRICHED)
    assert output["title"] == "Transaction"
    assert output["$schema"] == TXN["$schema"]
    assert output["additionalProperties"] is False
    assert output["properties"] == {
        **TXN["properties"],
        "score": {"type": "number"},
        "label": {"type": "integer"},
        "classes": {"type": "array", "items": {"type": "string"}},
        "flagged": {"type": "boolean"},
    }
    assert output["required"] == [
        "id",
        "amount",
        "merchant",
        "score",
        "label",
        "classes",
        "flagged",
    ]
    assert "score" not in TXN["properties"]  # the writer schema is left alone


def test_prediction_schema_holds_the_id_property_and_the_fields() -> None:
    output = derive_output_schema(TXN, PREDICTION)
    assert output["title"] == "TransactionPrediction"
    assert output["type"] == "object"
    assert list(output["properties"]) == ["id", "score", "label", "classes", "flagged"]
    assert output["properties"]["id"] == {"type": "string"}
    assert output["required"] == ["id", "score", "label", "classes", "flagged"]


def test_prediction_schema_keeps_an_optional_id_optional_and_its_definitions() -> None:
    writer = {
        "title": "Click",
        "type": "object",
        "definitions": {"Key": {"type": "integer"}},
        "properties": {"key": {"$ref": "#/definitions/Key"}, "page": {"type": "string"}},
    }
    output = derive_output_schema(writer, OutputLayout(FIELDS[:1], False, id_field="key"))
    assert output["properties"] == {
        "key": {"$ref": "#/definitions/Key"},
        "score": {"type": "number"},
    }
    assert output["definitions"] == writer["definitions"]
    assert output["required"] == ["score"]
    without_id = derive_output_schema({"type": "object"}, OutputLayout(FIELDS[:1], False))
    assert without_id["title"] == "Prediction" and list(without_id["properties"]) == ["score"]


def test_a_prediction_field_that_is_already_a_property_clashes() -> None:
    layout = OutputLayout((PredictionField("amount", "double"), PredictionField("note", "string")))
    with pytest.raises(SchemaClash) as caught:
        derive_output_schema(TXN, layout)
    assert caught.value.names == ("amount", "note")
    assert "--output-field predicted_amount=" in str(caught.value)
    # the prediction layout keeps only the id of the input
    derive_output_schema(TXN, OutputLayout(layout.fields, enriched=False))
    with pytest.raises(SchemaClash):
        derive_output_schema(TXN, OutputLayout((PredictionField("id", "long"),), enriched=False))


# --------------------------------------------------------------- schema-file mode


def test_schema_file_mode_decodes_plain_and_framed_values(tmp_path: Path) -> None:
    fmt = file_format(tmp_path)
    checked: RecordFormat = fmt
    assert checked.name == "json-schema"
    plain = orjson.dumps(RECORD)
    assert fmt.needs_resolve([plain, wire_header(99) + plain, None]) is False
    fmt.resolve([plain])
    assert fmt.decode(plain) == (RECORD, None)
    assert fmt.decode(wire_header(99) + plain) == (RECORD, None)  # the id is ignored


def test_schema_file_mode_writes_plain_json_and_the_output_schema(tmp_path: Path) -> None:
    fmt = file_format(tmp_path)
    record, key = fmt.decode(orjson.dumps(RECORD))
    encoded = fmt.encode({**record, **PREDICTED}, key)
    assert orjson.loads(encoded) == {**RECORD, **PREDICTED}  # no framing
    written = json.loads((tmp_path / "out.json").read_text())
    assert written == derive_output_schema(TXN, ENRICHED)
    assert json.loads(fmt.output_schema_text(key) or "") == written


def test_outputs_validate_against_the_derived_schema(tmp_path: Path) -> None:
    from jsonschema.validators import validator_for

    for layout, output in [
        (ENRICHED, {**RECORD, **PREDICTED}),
        (PREDICTION, {"id": RECORD["id"], **PREDICTED}),
    ]:
        fmt = file_format(tmp_path, layout=layout)
        schema = json.loads((tmp_path / "out.json").read_text())
        validator_for(schema)(schema).validate(orjson.loads(fmt.encode(output, None)))


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (None, "record has no value (tombstone)"),
        (b"{not json", "value is not valid JSON"),
        (b"[1, 2]", "value must be a JSON object, got list"),
        (
            orjson.dumps({**RECORD, "amount": "12.5"}),
            "value does not match the schema file at $.amount: '12.5' is not of type 'number'",
        ),
        (
            orjson.dumps({**RECORD, "amount": -1}),
            "at $.amount: -1 is less than the minimum of 0",
        ),
        (
            orjson.dumps({"id": "t1", "amount": 1}),
            "at $: 'merchant' is a required property",
        ),
        (
            orjson.dumps({**RECORD, "merchant": {"risk": 0.1}}),
            "at $.merchant: 'category' is a required property",
        ),
        (
            orjson.dumps({**RECORD, "extra": 1}),
            "Additional properties are not allowed ('extra' was unexpected)",
        ),
    ],
)
def test_values_the_schema_refuses_are_record_errors_naming_path_and_reason(
    tmp_path: Path, value: bytes | None, reason: str
) -> None:
    fmt = file_format(tmp_path)
    with pytest.raises(RecordError) as caught:
        fmt.decode(value)
    assert caught.value.stage == "decode"
    assert reason in caught.value.reason


def test_a_non_finite_double_cannot_be_written(tmp_path: Path) -> None:
    fmt = file_format(tmp_path)
    for bad in ({"score": math.nan}, {"score": math.inf}):
        with pytest.raises(RecordError) as caught:
            fmt.encode({**RECORD, **PREDICTED, **bad}, None)
        assert caught.value.stage == "encode"
        assert "'score' is not a finite number" in caught.value.reason
    repeated = OutputLayout((PredictionField("probs", "double", repeated=True),))
    fmt = file_format(tmp_path, layout=repeated)
    assert orjson.loads(fmt.encode({**RECORD, "probs": [0.5, 1]}, None))["probs"] == [0.5, 1]
    with pytest.raises(RecordError, match="'probs' is not a finite number"):
        fmt.encode({**RECORD, "probs": [0.5, math.nan]}, None)


@pytest.mark.parametrize(
    ("schema", "message"),
    [
        ("not json", "is not JSON"),
        ([1], "is not a valid JSON Schema: the schema must be a JSON object"),
        ({"type": "objekt"}, "is not a valid JSON Schema: 'objekt' is not valid"),
    ],
)
def test_a_bad_schema_file_is_refused_at_start(
    tmp_path: Path, schema: object, message: str
) -> None:
    path = tmp_path / "in.json"
    path.write_text(schema if isinstance(schema, str) else json.dumps(schema))
    with pytest.raises(InvalidArgument, match=message):
        create(FormatOptions(ENRICHED, "out", input_schema=path))


def test_a_schema_file_clash_is_refused_at_start(tmp_path: Path) -> None:
    layout = OutputLayout((PredictionField("amount", "double"),))
    with pytest.raises(InvalidArgument, match=r"\['amount'\] are already properties"):
        file_format(tmp_path, layout=layout)


def test_missing_schema_file_and_missing_registry(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="--input-schema"):
        create(FormatOptions(ENRICHED, "out", input_schema=tmp_path / "absent.json"))
    with pytest.raises(InvalidArgument, match="needs a schema registry"):
        create(FormatOptions(ENRICHED, "out"))


# ------------------------------------------------ registry mode, before any registry call


@pytest.fixture
def registry_format() -> JsonSchemaFormat:
    # A registry nobody listens on: nothing here may call it.
    registry = Registry(RegistrySettings("http://127.0.0.1:9"))
    return create(FormatOptions(ENRICHED, "out", registry=registry))


def test_values_not_in_the_wire_format_need_no_resolve_and_are_refused(
    registry_format: JsonSchemaFormat,
) -> None:
    plain = orjson.dumps(RECORD)
    assert registry_format.needs_resolve([plain, b"\x00\x00", None]) is False
    registry_format.resolve([plain, b"\x00\x00", None])  # nothing to fetch
    for value in (plain, b"\x00\x00"):
        with pytest.raises(RecordError) as caught:
            registry_format.decode(value)
        assert caught.value.reason.startswith(
            "value is not in the Confluent wire format (magic byte 0 + schema id)"
        )


def test_a_framed_value_needs_resolve_and_is_not_decoded_before(
    registry_format: JsonSchemaFormat,
) -> None:
    value = wire_header(7) + orjson.dumps(RECORD)
    assert registry_format.needs_resolve([None, value]) is True
    with pytest.raises(RecordError, match="schema id 7 was not resolved"):
        registry_format.decode(value)
    with pytest.raises(RecordError, match="no output schema for input schema id 7"):
        registry_format.encode(RECORD, 7)
    assert registry_format.output_schema_text(7) is None


def test_an_unreachable_registry_is_unavailable_and_nothing_is_remembered(
    registry_format: JsonSchemaFormat,
) -> None:
    from streamserve.stream.errors import DependencyUnavailable

    value = wire_header(7) + orjson.dumps(RECORD)
    with pytest.raises(DependencyUnavailable) as caught:
        registry_format.resolve([value])
    assert caught.value.dependency == "schema registry"
    assert registry_format.needs_resolve([value]) is True  # asked again next batch
