from __future__ import annotations

import types

import orjson
import pytest

from streamserve.stream.codecs.formats import (
    FormatOptions,
    OutputLayout,
    PredictionField,
    RecordFormat,
)
from streamserve.stream.codecs.json_events import JsonFormat, create
from streamserve.stream.errors import RecordError


@pytest.fixture
def fmt() -> JsonFormat:
    layout = OutputLayout((PredictionField("score", "double"),), enriched=True)
    return create(FormatOptions(layout=layout, output_topic="out"))


def test_is_a_record_format_named_json(fmt: JsonFormat) -> None:
    checked: RecordFormat = fmt
    assert checked.name == "json"
    assert fmt.output_schema_text(None) is None


def test_never_needs_resolve_and_resolve_is_a_no_op(fmt: JsonFormat) -> None:
    values = [b'{"a": 1}', None, b"\x00\x00\x00\x00\x01{}", b"junk"]
    assert fmt.needs_resolve(values) is False
    assert fmt.needs_resolve([]) is False
    assert fmt.resolve(values) is None


def test_decodes_nested_objects_as_dicts(fmt: JsonFormat) -> None:
    value = b'{"txn_id": "t1", "amount": 12.5, "merchant": {"category": "food", "risk": 0.2}}'
    record, key = fmt.decode(value)
    assert key is None
    assert record == {"txn_id": "t1", "amount": 12.5, "merchant": {"category": "food", "risk": 0.2}}


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (None, "tombstone"),
        (b"not json", "not valid JSON"),
        (b"[1, 2]", "must be a JSON object, got list"),
        (b'"text"', "must be a JSON object, got str"),
        (b"\x00\x00\x00\x00\x07{}", "not valid JSON"),
    ],
)
def test_bad_values_are_record_errors_with_reasons(
    fmt: JsonFormat, value: bytes | None, reason: str
) -> None:
    with pytest.raises(RecordError) as caught:
        fmt.decode(value)
    assert caught.value.stage == "decode"
    assert reason in caught.value.reason


def test_encodes_the_output_dict_as_json(fmt: JsonFormat) -> None:
    record, key = fmt.decode(b'{"id": 7, "amount": 1.5, "tags": ["a"]}')
    output = {**record, "score": 0.25, "labels": ["x", "y"], "ok": True}
    encoded = fmt.encode(output, key)
    assert isinstance(encoded, bytes)
    assert orjson.loads(encoded) == output


def test_encodes_a_read_only_mapping(fmt: JsonFormat) -> None:
    encoded = fmt.encode(types.MappingProxyType({"id": "a", "score": 1.0}), None)
    assert orjson.loads(encoded) == {"id": "a", "score": 1.0}


def test_encode_error_is_a_record_error(fmt: JsonFormat) -> None:
    with pytest.raises(RecordError) as caught:
        fmt.encode({"bad": object()}, None)
    assert caught.value.stage == "encode"
