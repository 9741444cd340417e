"""The Avro format without a registry: schema derivation, schema-file mode (records written
by fastavro, outputs read back with the schema file the format wrote), and the checks that
need no registry answer. The registry path runs against a real Apicurio Registry in
tests/integration/test_stream_avro.py."""

from __future__ import annotations

import copy
import io
import json
from pathlib import Path
from typing import Any

import pytest
from fastavro import parse_schema, schemaless_reader, schemaless_writer

from streamserve.errors import InvalidArgument
from streamserve.processes import free_port
from streamserve.stream.codecs.avro import (
    AvroFormat,
    NotARecord,
    SchemaClash,
    create,
    derive_output_schema,
    field_type,
)
from streamserve.stream.codecs.formats import (
    FormatOptions,
    OutputLayout,
    PredictionField,
    RecordFormat,
)
from streamserve.stream.codecs.registry import Registry, RegistrySettings, wire_header
from streamserve.stream.errors import DependencyUnavailable, RecordError

FIELDS = (
    PredictionField("score", "double"),
    PredictionField("label", "long"),
    PredictionField("classes", "string", repeated=True),
    PredictionField("flagged", "boolean"),
)
ENRICHED = OutputLayout(FIELDS)
PREDICTION = OutputLayout(FIELDS, enriched=False)

TXN: dict[str, Any] = {
    "type": "record",
    "name": "Transaction",
    "namespace": "shop.events",
    "doc": "a card payment",
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
                    {"name": "risk", "type": ["null", "double"], "default": None},
                ],
            },
        },
        {"name": "tags", "type": {"type": "array", "items": "string"}},
    ],
}
RECORD: dict[str, Any] = {
    "id": "t1",
    "amount": 12.5,
    "age": 41,
    "merchant": {"category": "food", "risk": 0.25},
    "tags": ["web"],
}
PREDICTED = {"score": 0.75, "label": 1, "classes": ["a", "b"], "flagged": False}


def avro(record: dict[str, Any], schema: Any = TXN) -> bytes:
    """``record`` as plain Avro binary, written by fastavro (no registry)."""
    buffer = io.BytesIO()
    schemaless_writer(buffer, parse_schema(copy.deepcopy(schema)), record)
    return buffer.getvalue()


def read(value: bytes, schema: Any) -> Any:
    buffer = io.BytesIO(value)
    record = schemaless_reader(buffer, parse_schema(copy.deepcopy(schema)), None)
    assert buffer.tell() == len(value)
    return record


def file_format(
    tmp_path: Path, schema: object = TXN, layout: OutputLayout = ENRICHED
) -> AvroFormat:
    path = tmp_path / "in.avsc"
    path.write_text(json.dumps(schema))
    return create(
        FormatOptions(layout, "out", input_schema=path, output_schema=tmp_path / "out.avsc")
    )


# ------------------------------------------------------------------ output schemas


def test_field_types_by_kind_and_repetition() -> None:
    assert field_type(PredictionField("a", "double")) == "double"
    assert field_type(PredictionField("a", "long")) == "long"
    assert field_type(PredictionField("a", "string")) == "string"
    assert field_type(PredictionField("a", "boolean")) == "boolean"
    assert field_type(PredictionField("a", "double", repeated=True)) == {
        "type": "array",
        "items": "double",
    }


def test_enriched_schema_is_the_writer_schema_plus_the_prediction_fields() -> None:
    writer = copy.deepcopy(TXN)
    output = derive_output_schema(writer, ENRICHED)
    assert (output["name"], output["namespace"], output["doc"]) == (
        "Transaction",
        "shop.events",
        "a card payment",
    )
    assert output["fields"] == [
        *TXN["fields"],
        {"name": "score", "type": "double"},
        {"name": "label", "type": "long"},
        {"name": "classes", "type": {"type": "array", "items": "string"}},
        {"name": "flagged", "type": "boolean"},
    ]
    assert writer == TXN  # the writer schema is left alone
    parse_schema(output)  # valid Avro


def test_prediction_schema_holds_the_id_field_and_the_fields() -> None:
    output = derive_output_schema(TXN, PREDICTION)
    assert output["name"] == "TransactionPrediction"
    assert output["namespace"] == "shop.events"
    assert [f["name"] for f in output["fields"]] == ["id", "score", "label", "classes", "flagged"]
    assert output["fields"][0] == {"name": "id", "type": "string"}
    parse_schema(output)


def test_prediction_schema_inlines_a_named_id_type_and_keeps_an_optional_id_optional() -> None:
    writer = {
        "type": "record",
        "name": "a.b.Click",
        "fields": [
            {"name": "kind", "type": {"type": "enum", "name": "Kind", "symbols": ["X", "Y"]}},
            {"name": "key", "type": ["null", "Kind"], "default": None},
        ],
    }
    output = derive_output_schema(writer, OutputLayout(FIELDS[:1], False, id_field="key"))
    assert (output["name"], output["namespace"]) == ("ClickPrediction", "a.b")
    key = output["fields"][0]
    assert key["default"] is None
    assert key["type"] == ["null", {"type": "enum", "name": "a.b.Kind", "symbols": ["X", "Y"]}]
    parse_schema(output)
    without_id = derive_output_schema(writer, OutputLayout(FIELDS[:1], False))
    assert without_id["fields"] == [{"name": "score", "type": "double"}]


def test_a_prediction_field_that_is_already_a_field_clashes() -> None:
    layout = OutputLayout((PredictionField("amount", "double"), PredictionField("tags", "string")))
    with pytest.raises(SchemaClash) as caught:
        derive_output_schema(TXN, layout)
    assert caught.value.names == ("amount", "tags")
    assert "--output-field predicted_amount=" in str(caught.value)
    derive_output_schema(TXN, OutputLayout(layout.fields, enriched=False))  # only the id kept
    with pytest.raises(SchemaClash):
        derive_output_schema(TXN, OutputLayout((PredictionField("id", "long"),), enriched=False))


def test_only_records_have_an_output_schema() -> None:
    for writer in ("string", {"type": "array", "items": "long"}, ["null", "string"]):
        with pytest.raises(NotARecord, match="not a record"):
            derive_output_schema(writer, ENRICHED)


# --------------------------------------------------------------- schema-file mode


def test_schema_file_records_written_by_fastavro_read_back_with_the_written_schema(
    tmp_path: Path,
) -> None:
    fmt = file_format(tmp_path)
    written = json.loads((tmp_path / "out.avsc").read_text())
    assert written == json.loads(fmt.output_schema_text(None) or "")
    assert written == derive_output_schema(TXN, ENRICHED)
    assert not fmt.needs_resolve([avro(RECORD)])
    fmt.resolve([avro(RECORD)])  # nothing to resolve
    records = [{**RECORD, "id": f"t{i}", "amount": 1.5 * i} for i in range(5)]
    for i, record in enumerate(records):
        plain = avro(record)
        value = plain if i % 2 else wire_header(7) + plain  # plain or framed (id ignored)
        decoded, key = fmt.decode(value)
        assert (decoded, key) == (record, None)
        output = fmt.encode({**decoded, **PREDICTED}, key)
        assert read(output, written) == {**record, **PREDICTED}  # plain Avro, no header


def test_schema_file_plain_values_starting_with_a_zero_byte_are_not_taken_as_framed(
    tmp_path: Path,
) -> None:
    schema = {
        "type": "record",
        "name": "Reading",
        "fields": [
            {"name": "id", "type": "long"},
            {"name": "note", "type": ["null", "string"]},
            {"name": "value", "type": "double"},
            {"name": "unit", "type": "string"},
        ],
    }
    fmt = file_format(tmp_path, schema, OutputLayout(FIELDS[:1]))
    for record in (
        {"id": 0, "note": None, "value": 2.5, "unit": "C"},  # 0x00 0x00 ...
        {"id": 0, "note": "x", "value": 0.0, "unit": ""},
    ):
        plain = avro(record, schema)
        assert plain[0] == 0
        assert fmt.decode(plain)[0] == record
        assert fmt.decode(wire_header(1) + plain)[0] == record


def test_schema_file_prediction_layout(tmp_path: Path) -> None:
    fmt = file_format(tmp_path, layout=PREDICTION)
    written = json.loads((tmp_path / "out.avsc").read_text())
    assert written["name"] == "TransactionPrediction"
    decoded, key = fmt.decode(avro(RECORD))
    output = {"id": decoded["id"], **PREDICTED}
    assert read(fmt.encode(output, key), written) == output


def test_schema_file_bad_values_are_decode_errors(tmp_path: Path) -> None:
    fmt = file_format(tmp_path)
    good = avro(RECORD)
    cases: dict[bytes | None, str] = {
        good[:-3]: "neither as plain Avro binary nor after a Confluent wire header",
        good + b"\x02\x02": "byte(s) left after the record",
        b"": "the value ends too early",
        None: "tombstone",
    }
    for value, reason in cases.items():
        with pytest.raises(RecordError) as caught:
            fmt.decode(value)
        assert caught.value.stage == "decode"
        assert reason in caught.value.reason, caught.value.reason


def test_encode_refuses_what_the_output_schema_refuses(tmp_path: Path) -> None:
    fmt = file_format(tmp_path)
    decoded, key = fmt.decode(avro(RECORD))
    cases = {
        "Field(shop.events.Transaction.score) is None expected double": {
            **decoded,
            **PREDICTED,
            "score": None,
        },
        "no value for field(s) ['label']": {
            k: v for k, v in {**decoded, **PREDICTED}.items() if k != "label"
        },
        "field(s) ['extra'] are not in the output schema": {
            **decoded,
            **PREDICTED,
            "extra": 1,
        },
        "shop.events.Transaction.classes is <1> of type <class 'int'> expected string": {
            **decoded,
            **PREDICTED,
            "classes": [1],
        },
    }
    for reason, record in cases.items():
        with pytest.raises(RecordError) as caught:
            fmt.encode(record, key)
        assert caught.value.stage == "encode"
        assert "does not fit its Avro schema" in caught.value.reason
        assert reason in caught.value.reason, caught.value.reason


def test_schema_file_problems_are_named_at_start(tmp_path: Path) -> None:
    missing = tmp_path / "nope.avsc"
    with pytest.raises(InvalidArgument, match=r"nope\.avsc: No such file"):
        create(FormatOptions(ENRICHED, "out", input_schema=missing))
    cases: dict[str, Any] = {
        "is not JSON": "{oops",
        "is not a valid Avro schema": {"type": "record", "name": "R", "fields": [{"name": "a"}]},
        "not a record": {"type": "array", "items": "long"},
        "['amount'] are already fields": TXN,
    }
    for reason, document in cases.items():
        path = tmp_path / "bad.avsc"
        path.write_text(document if isinstance(document, str) else json.dumps(document))
        layout = OutputLayout((PredictionField("amount", "double"),))
        with pytest.raises(InvalidArgument) as caught:
            create(FormatOptions(layout, "out", input_schema=path))
        assert reason in str(caught.value), caught.value


def test_prediction_field_names_must_be_avro_names(tmp_path: Path) -> None:
    layout = OutputLayout((PredictionField("fraud-score", "double"),))
    with pytest.raises(InvalidArgument, match=r"\['fraud-score'\] are not valid Avro names"):
        file_format(tmp_path, layout=layout)


def test_a_registry_or_a_schema_file_is_needed() -> None:
    with pytest.raises(InvalidArgument, match=r"--input-schema FILE\.avsc"):
        create(FormatOptions(ENRICHED, "out"))


def test_it_is_a_record_format(tmp_path: Path) -> None:
    fmt: RecordFormat = file_format(tmp_path)
    assert fmt.name == "avro"


# ------------------------------------------------- registry mode, no registry answer


def unreachable() -> Registry:
    """A registry client for a port nothing listens on (no schema can be fetched)."""
    return Registry(RegistrySettings(f"http://127.0.0.1:{free_port()}", timeout_s=2))


def test_values_not_in_the_wire_format_need_no_registry() -> None:
    registry = unreachable()
    try:
        fmt = create(FormatOptions(ENRICHED, "out", registry))
        plain = avro(RECORD)
        for value in (b"\x01" + plain, b"\x00\x00", b"{}"):
            assert not fmt.needs_resolve([value])
            with pytest.raises(RecordError, match="not in the Confluent wire format"):
                fmt.decode(value)
        framed = wire_header(3) + plain
        assert fmt.needs_resolve([b"{}", framed])
        with pytest.raises(RecordError, match="schema id 3 was not resolved"):
            fmt.decode(framed)
    finally:
        registry.close()


def test_an_unreachable_registry_is_not_the_records_fault() -> None:
    registry = unreachable()
    try:
        fmt = create(FormatOptions(ENRICHED, "out", registry))
        framed = wire_header(3) + avro(RECORD)
        with pytest.raises(DependencyUnavailable) as caught:
            fmt.resolve([framed])
        assert caught.value.dependency == "schema registry"
        assert fmt.needs_resolve([framed])  # nothing remembered: the next batch asks again
    finally:
        registry.close()
