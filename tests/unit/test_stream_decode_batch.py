"""TensorJsonCodec.decode_batch: one call per consumed batch, the same answers as decoding
each record alone (stacked when the records agree, one by one when they do not)."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
import pytest

from streamserve.stream.codecs import (
    DecodedRecord,
    InputRecord,
    TensorJsonCodec,
    batch_decoder,
)
from streamserve.stream.errors import RecordError


def records(values: list[Any]) -> list[InputRecord]:
    return [
        InputRecord("in", 0, offset, None, v if isinstance(v, bytes) else orjson.dumps(v))
        for offset, v in enumerate(values)
    ]


def assert_same(batch: list[DecodedRecord | RecordError], alone: list[Any]) -> None:
    assert len(batch) == len(alone)
    for got, expected in zip(batch, alone, strict=True):
        if isinstance(expected, RecordError):
            assert isinstance(got, RecordError) and got.reason == expected.reason
            continue
        assert isinstance(got, DecodedRecord) and got.id == expected.id
        assert got.inputs.keys() == expected.inputs.keys()
        for name, array in expected.inputs.items():
            assert got.inputs[name].dtype == array.dtype and got.inputs[name].shape == array.shape
            np.testing.assert_array_equal(got.inputs[name], array)


AGREEING = [{"id": i, "inputs": {"x": [[i, 2.5, 3, 4]], "ids": [[i, 1]]}} for i in range(5)]
MIXED = [
    {"inputs": {"x": [[1, 2, 3, 4]], "ids": [[1, 2]]}},
    {"inputs": {"x": [[0.5, 2, 3, 4], [1, 1, 1, 1]], "ids": [[1, 2], [3, 4]]}},
    {"inputs": {"x": [[1, 2, 3]], "ids": [[1, 2]]}},
    {"inputs": {"names": ["a", {"b64": "aGk="}]}},
    {"inputs": {"x": [[1, 2, 3, 4]], "ids": [[1, 2], [3, 4]]}},
    b"not json",
]


@pytest.mark.parametrize("dtypes", [{}, {"x": "float32", "ids": "int64"}], ids=["json", "model"])
@pytest.mark.parametrize(
    "values", [AGREEING, MIXED, [*AGREEING, b"{bad"]], ids=["agree", "mixed", "poison"]
)
def test_a_batch_decodes_like_each_record_alone(dtypes: dict[str, str], values: list[Any]) -> None:
    codec = TensorJsonCodec(dtypes)
    alone: list[Any] = []
    for record in records(values):
        try:
            alone.append(codec.decode_now(record))
        except RecordError as error:
            alone.append(error)
    assert_same(codec.decode_batch(records(values)), alone)


def test_agreeing_records_share_one_array_per_input() -> None:
    decoded = TensorJsonCodec({"x": "float32"}).decode_batch(records(AGREEING))
    bases = {id(d.inputs["x"].base) for d in decoded if isinstance(d, DecodedRecord)}
    assert len(bases) == 1


def test_only_a_synchronous_decode_batch_is_the_fast_path() -> None:
    class AsyncBatch:
        async def decode_batch(self, records: list[InputRecord]) -> list[Any]:
            return []

    assert batch_decoder(TensorJsonCodec()) is not None
    assert batch_decoder(AsyncBatch()) is None
    assert batch_decoder(object()) is None
