"""The event codec over plain JSON events: declared features (stacked, nested, named,
defaults), prediction fields, enriched and prediction outputs, and the records at fault."""

from __future__ import annotations

import asyncio
from types import MappingProxyType

import numpy as np
import orjson
import pytest

from streamserve.errors import InvalidArgument
from streamserve.runtimes.base import Signature, TensorSpec
from streamserve.stream.codecs import InputRecord, batch_preparer
from streamserve.stream.codecs.events import EventCodec
from streamserve.stream.codecs.features import Feature, FeatureMapping
from streamserve.stream.codecs.formats import OutputLayout
from streamserve.stream.codecs.json_events import JsonFormat
from streamserve.stream.codecs.predictions import (
    PredictionFields,
    default_sources,
    parse_source,
)
from streamserve.stream.errors import RecordError

SIGNATURE = Signature(
    "serving_default",
    MappingProxyType({"x": TensorSpec("x", np.dtype(np.float32), (None, 3))}),
    MappingProxyType(
        {
            "probabilities": TensorSpec("probabilities", np.dtype(np.float32), (None, 2)),
            "label": TensorSpec("label", np.dtype(np.int64), (None,)),
        }
    ),
)
FEATURES = (Feature("x", ("amount", "age", "merchant.risk"), stacked=True),)


def codec(enriched: bool = True, **outputs: str) -> EventCodec:
    features = FeatureMapping(FEATURES, {"merchant.risk": 0.5}, SIGNATURE.inputs)
    sources = [parse_source(name, text, SIGNATURE) for name, text in outputs.items()]
    predictions = PredictionFields(sources or default_sources(SIGNATURE))
    layout = OutputLayout(predictions.fields, enriched)
    return EventCodec(JsonFormat(), features, predictions, layout)


def records(*documents: object) -> list[InputRecord]:
    return [
        InputRecord("in", 0, offset, None, doc if isinstance(doc, bytes) else orjson.dumps(doc))
        for offset, doc in enumerate(documents)
    ]


def event(txn: str, amount: float, age: int, risk: float | None = None) -> dict[str, object]:
    merchant: dict[str, object] = {"category": "food"}
    if risk is not None:
        merchant["risk"] = risk
    return {"id": txn, "amount": amount, "age": age, "merchant": merchant}


def test_nested_fields_stack_into_one_input_with_the_signature_dtype() -> None:
    batch = codec().decode_stacked(records(event("a", 1.5, 30, 0.9), event("b", 2.0, 40)))
    assert batch.stacked is not None and batch.rows == 1
    x = batch.stacked["x"]
    assert x.dtype == np.float32 and x.shape == (2, 3)
    np.testing.assert_allclose(x, [[1.5, 30, 0.9], [2.0, 40, 0.5]])  # default for b
    assert [r.id for r in batch.records if not isinstance(r, RecordError)] == ["a", "b"]


def test_missing_field_and_bad_json_are_the_records_fault_not_the_batchs() -> None:
    batch = codec().decode_stacked(
        records(event("a", 1.0, 3), {"id": "b", "amount": 2.0}, b"{not json", event("d", 4, 5))
    )
    outcome = batch.records
    assert isinstance(outcome[1], RecordError) and "'age' is missing" in outcome[1].reason
    assert isinstance(outcome[2], RecordError) and "not valid JSON" in outcome[2].reason
    assert batch.stacked is not None and batch.stacked["x"].shape == (2, 3)


def test_a_field_of_the_wrong_type_names_the_fields() -> None:
    batch = codec().decode_stacked(records(event("a", 1.0, 3), {**event("b", 1, 2), "age": "old"}))
    error = batch.records[1]
    assert isinstance(error, RecordError) and "amount, age, merchant.risk" in error.reason
    assert batch.stacked is not None and batch.stacked["x"].shape == (1, 3)


def test_enriched_output_keeps_every_input_field_and_adds_the_prediction() -> None:
    events = codec(fraud_score="probabilities[1]", version="$model_version")
    batch = events.decode_stacked(records(event("a", 1.0, 3, 0.2), event("b", 2.0, 4, 0.1)))
    outputs = {"probabilities": np.array([[0.9, 0.1], [0.25, 0.75]], np.float32)}
    encoded = events.encode_batch(
        batch.records, outputs, [1, 1], "fraud", 3, [1.0, 2.0], "embedded"
    )
    first, second = (orjson.loads(value) for value in encoded)
    assert first == {**event("a", 1.0, 3, 0.2), "fraud_score": pytest.approx(0.1), "version": 3}
    assert second["fraud_score"] == pytest.approx(0.75) and second["merchant"]["risk"] == 0.1


def test_prediction_output_holds_the_id_and_the_default_fields() -> None:
    events = codec(enriched=False)
    batch = events.decode_stacked(records(event("a", 1.0, 3)))
    outputs = {"probabilities": np.array([[0.9, 0.1]], np.float32), "label": np.array([0])}
    (encoded,) = events.encode_batch(batch.records, outputs, [1], "m", 1, [1.0], "embedded")
    document = orjson.loads(encoded)
    assert document["id"] == "a" and document["label"] == 0 and document["model_version"] == 1
    assert document["probabilities"] == pytest.approx([0.9, 0.1])


def test_a_prediction_field_that_clashes_with_an_input_field_is_refused() -> None:
    events = codec(amount="probabilities[1]")
    batch = events.decode_stacked(records(event("a", 1.0, 3)))
    outputs = {"probabilities": np.array([[0.9, 0.1]], np.float32)}
    (encoded,) = events.encode_batch(batch.records, outputs, [1], "m", 1, [1.0], "embedded")
    assert isinstance(encoded, RecordError) and "'amount'" in encoded.reason


def test_named_inputs_one_field_each_strings_included() -> None:
    inputs = MappingProxyType(
        {
            "amount": TensorSpec("amount", np.dtype(np.float32), (None, 1)),
            "category": TensorSpec("category", np.dtype(object), (None, 1)),
        }
    )
    features = FeatureMapping(
        [Feature("amount", ("amount",)), Feature("category", ("merchant.category",))],
        inputs=inputs,
    )
    columns, errors = features.columns([event("a", 1.0, 3), event("b", 2.5, 4)])
    assert errors == [None, None]
    assert columns["amount"].shape == (2, 1) and columns["amount"].dtype == np.float32
    assert columns["category"].reshape(-1).tolist() == [b"food", b"food"]


def test_without_a_table_the_signatures_inputs_are_top_level_fields() -> None:
    features = FeatureMapping.from_signature(SIGNATURE)
    columns, errors = features.columns([{"x": [1, 2, 3]}, {"y": 1}])
    assert columns["x"].shape == (1, 3) and isinstance(errors[1], RecordError)
    with pytest.raises(InvalidArgument, match="declare a \\[features\\] table"):
        FeatureMapping.from_signature(None)


def test_output_sources_are_checked_against_the_signature() -> None:
    with pytest.raises(InvalidArgument, match="no output 'score'"):
        parse_source("s", "score[1]", SIGNATURE)
    with pytest.raises(InvalidArgument, match="SOURCE is"):
        parse_source("s", "probabilities[x]", SIGNATURE)
    field = parse_source("s", "label:string", SIGNATURE).field
    assert (field.kind, field.repeated) == ("string", False)
    assert parse_source("p", "probabilities", SIGNATURE).field.repeated


def test_flag_form_of_a_feature() -> None:
    assert Feature.from_flag("x=a,b.c") == Feature("x", ("a", "b.c"), stacked=True)
    assert Feature.from_flag("amount=amount") == Feature("amount", ("amount",))
    with pytest.raises(InvalidArgument):
        Feature.from_flag("x=")


def test_the_codec_prepares_its_batches() -> None:
    prepare = batch_preparer(codec())
    assert prepare is not None
    asyncio.run(prepare(records(event("a", 1.0, 3))))
