"""Tensor JSON records: ``{"id": ..., "inputs": {name: nested list}}`` (TF Serving's
columnar JSON with the batch dimension; one record is one row or a small batch) →
``{"id", "model": {"name", "version"}, "outputs": {name: nested list}, "latency_ms", "mode"}``.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
from collections.abc import Mapping, Sequence
from typing import Any, cast

import numpy as np
import orjson

from streamserve.stream.codecs.base import (
    DECODE,
    PLAIN_IDS,
    DecodedRecord,
    Encoded,
    InputRecord,
    RecordId,
    StackedBatch,
    dumps,
    encode_each,
    parse_json_object,
    record_id_of,
)
from streamserve.stream.errors import RecordError


def _json_to_array(name: str, value: object, dtype: np.dtype | None) -> np.ndarray:
    try:
        array = np.asarray(value) if dtype is None else np.asarray(value, dtype=dtype)
    except (ValueError, TypeError, OverflowError) as exc:
        raise RecordError(
            DECODE,
            f"input {name!r} is not a rectangular array of one type: {exc}",
            type(exc).__name__,
        ) from exc
    if array.dtype.kind in "OU":
        return _bytes_elements(name, array)
    if dtype is not None:
        return array
    if array.dtype.kind == "f":
        return array.astype(np.float32)
    if array.dtype.kind not in "biu":
        raise RecordError(DECODE, f"input {name!r} must hold numbers, booleans or strings")
    return array


def _bytes_elements(name: str, array: np.ndarray) -> np.ndarray:
    """Strings (UTF-8) and TF Serving's ``{"b64": "..."}`` objects → an object array of bytes."""
    encoded = np.empty(array.shape, dtype=object)
    encoded.flat[:] = [_element_bytes(name, item) for item in array.flat]
    return encoded


def _element_bytes(name: str, item: object) -> bytes:
    if isinstance(item, str):
        return item.encode("utf-8")
    if isinstance(item, bytes):
        return item
    if isinstance(item, dict) and set(item) == {"b64"} and isinstance(item["b64"], str):
        try:
            return base64.b64decode(item["b64"], validate=True)
        except (binascii.Error, ValueError) as exc:
            raise RecordError(
                DECODE, f"input {name!r}: 'b64' is not valid base64: {exc}", type(exc).__name__
            ) from exc
    raise RecordError(
        DECODE, f"input {name!r}: a {type(item).__name__} among strings (or not rectangular)"
    )


class TensorJsonCodec:
    """TF Serving columnar JSON in, JSON out. See the module docstring for the shapes.

    ``dtypes`` fixes the numpy dtype per input name (e.g. from the model's signature);
    otherwise JSON floats become ``float32``, integers ``int64`` and strings ``bytes``
    (``{"b64": "..."}`` elements, as in TF Serving's REST API, become their bytes). The
    predictor then casts numbers to the model's declared dtypes (the same cast in every
    mode; see :mod:`streamserve.predictors.signatures`).
    """

    def __init__(
        self,
        dtypes: Mapping[str, np.dtype | str] | None = None,
        signature_name: str | None = None,
    ) -> None:
        self.dtypes = {name: np.dtype(dtype) for name, dtype in (dtypes or {}).items()}
        self.signature_name = signature_name

    async def decode(self, record: InputRecord) -> DecodedRecord:
        return self.decode_now(record)

    def decode_batch(self, records: Sequence[InputRecord]) -> list[DecodedRecord | RecordError]:
        """Every record decoded in one call, synchronously (the processor's fast path):
        each entry is the decoded record or why it cannot be.

        Records whose inputs agree in names and shapes are converted together, one numpy
        array per input for the whole batch (each record gets a view of its rows); any
        other record is decoded alone, with exactly the per-record rules and messages."""
        return self.decode_stacked(records).records

    def decode_stacked(self, records: Sequence[InputRecord]) -> StackedBatch:
        """:meth:`decode_batch`, plus the stacked input arrays when the records agree."""
        parsed = self._parse_all(records)
        stacked = self._stacked(parsed)
        if stacked is not None:
            return stacked
        return StackedBatch(
            [item if isinstance(item, RecordError) else self._tensors(*item) for item in parsed]
        )

    def _parse_all(
        self, records: Sequence[InputRecord]
    ) -> list[tuple[RecordId, dict[str, Any]] | RecordError]:
        """:meth:`_parse` of each record, with the common case inlined (this is the hot
        path); anything unusual goes through :meth:`_parse` for its exact error."""
        loads = orjson.loads
        parsed: list[tuple[RecordId, dict[str, Any]] | RecordError] = []
        for record in records:
            try:
                document = loads(cast(bytes, record.value))
            except (orjson.JSONDecodeError, TypeError):
                document = None
            if type(document) is dict:
                inputs = document.get("inputs")
                record_id = document.get("id")
                if record_id is None:
                    record_id = record.position
                if type(inputs) is dict and inputs and type(record_id) in PLAIN_IDS:
                    parsed.append((record_id, inputs))
                    continue
            parsed.append(self._parse_or_error(record))
        return parsed

    def _parse_or_error(self, record: InputRecord) -> tuple[RecordId, dict[str, Any]] | RecordError:
        try:
            return self._parse(record)
        except RecordError as error:
            return error

    def decode_now(self, record: InputRecord) -> DecodedRecord:
        return self._decode_parsed(*self._parse(record))

    def _parse(self, record: InputRecord) -> tuple[RecordId, dict[str, Any]]:
        document = parse_json_object(record.value)
        record_id = record_id_of(document, record)
        inputs = document.get("inputs")
        if not isinstance(inputs, dict) or not inputs:
            raise RecordError(DECODE, "'inputs' must be a non-empty object of name: nested list")
        return record_id, inputs

    def _tensors(self, record_id: RecordId, inputs: dict[str, Any]) -> DecodedRecord | RecordError:
        try:
            return self._decode_parsed(record_id, inputs)
        except RecordError as error:
            return error
        except Exception as error:
            name = type(error).__name__
            return RecordError(DECODE, str(error) or name, name)

    def _stacked(
        self, parsed: Sequence[tuple[RecordId, dict[str, Any]] | RecordError]
    ) -> StackedBatch | None:
        """The fast path: every parsed record has the same input names and each input
        stacks into one rectangular numeric array of the per-record dtype; else None."""
        good = [item for item in parsed if not isinstance(item, RecordError)]
        if len(good) < 2:
            return None
        names = good[0][1].keys()
        if any(inputs.keys() != names for _, inputs in good):
            return None
        columns = {}
        for name in names:
            column = self._stack_column(name, [inputs[name] for _, inputs in good])
            if column is None:
                return None
            columns[name] = column
        rows = {column.shape[1] for column in columns.values()}
        if len(rows) != 1 or 0 in rows:
            return None  # disagreeing or zero rows: the per-record path says which
        decoded: list[DecodedRecord | RecordError] = []
        column_names = list(columns)
        views = iter(zip(*(list(column) for column in columns.values()), strict=True))
        for item in parsed:  # each record's inputs are views of its rows (list() makes them fast)
            if isinstance(item, RecordError):
                decoded.append(item)
            else:
                decoded.append(
                    DecodedRecord(item[0], None, dict(zip(column_names, next(views), strict=True)))
                )
        (per_record,) = rows
        stacked = {n: c.reshape(-1, *c.shape[2:]) for n, c in columns.items()}
        return StackedBatch(decoded, stacked, per_record)

    def _stack_column(self, name: str, values: list[Any]) -> np.ndarray | None:
        dtype = self.dtypes.get(name)
        try:
            column = np.asarray(values) if dtype is None else np.asarray(values, dtype=dtype)
        except (ValueError, TypeError, OverflowError):
            return None
        if column.ndim < 2 or column.dtype.kind not in "biuf":
            return None  # no batch dimension, strings or objects: decoded one by one
        if dtype is None and column.dtype.kind == "f":
            return None  # a record of integers alone would stay int64: decode one by one
        return column

    def _decode_parsed(self, record_id: RecordId, inputs: dict[str, Any]) -> DecodedRecord:
        tensors = {
            str(name): _json_to_array(name, value, self.dtypes.get(name))
            for name, value in inputs.items()
        }
        _check_rows(tensors)
        return DecodedRecord(record_id, None, tensors)

    def encode(
        self,
        decoded: DecodedRecord,
        rows: Mapping[str, np.ndarray],
        model_name: str,
        version: int,
        latency_ms: float,
        mode: str,
    ) -> bytes:
        outputs = {name: _jsonable(array) for name, array in rows.items()}
        return dumps(
            {
                "id": decoded.id,
                "model": {"name": model_name, "version": version},
                "outputs": outputs,
                "latency_ms": round(latency_ms, 3),
                "mode": mode,
            }
        )

    def encode_batch(
        self,
        decoded: Sequence[DecodedRecord],
        outputs: Mapping[str, np.ndarray],
        counts: Sequence[int],
        model_name: str,
        version: int,
        latency_ms: Sequence[float],
        mode: str,
    ) -> list[Encoded | RecordError]:
        """:meth:`encode` for a whole micro-batch, byte for byte, with the document's
        fixed parts written once per batch. Outputs of strings (object arrays) go through
        :meth:`encode` per record."""
        if len(decoded) == 1 or any(array.dtype == object for array in outputs.values()):
            return encode_each(
                self, decoded, outputs, counts, model_name, version, latency_ms, mode
            )
        opening = b',"model":' + dumps({"name": model_name, "version": version}) + b',"outputs":{'
        names = [dumps(str(name)) + b":" for name in outputs]
        names[1:] = [b"," + name for name in names[1:]]
        closing = b',"mode":' + dumps(mode) + b"}"
        rows = sum(counts)
        split = [_split_rows(array, rows) for array in outputs.values()]
        latencies = _split_numbers([round(latency, 3) for latency in latency_ms])
        ids = [record.id for record in decoded]
        id_texts: list[bytes | None] = [None] * len(ids)  # None: dumps per record
        if all(type(i) is int for i in ids):  # integers (the usual ids) in one dumps
            with contextlib.suppress(RecordError):  # beyond 64 bits: each record says so
                id_texts[:] = _split_numbers(cast(list[int], ids))
        if len(latencies) != len(decoded) or None in split or min(counts) < 1:
            # not cut into rows (shapes): one dumps per record and output
            return self._encode_sliced(
                decoded, outputs, counts, latency_ms, opening, names, closing
            )
        columns = [
            (name, texts, brackets, separator, b"]" * len(brackets))
            for name, (texts, brackets, separator) in zip(
                names, cast(list[tuple[list[bytes], bytes, bytes]], split), strict=True
            )
        ]
        encoded: list[Encoded | RecordError] = []
        start = 0
        for record, id_text, count, latency in zip(
            decoded, id_texts, counts, latencies, strict=True
        ):
            stop = start + count
            try:
                parts = [b'{"id":', id_text or dumps(record.id), opening]
                for name, texts, brackets, separator, closing_brackets in columns:
                    if count == 1:
                        parts += (name, brackets, texts[start], closing_brackets)
                    else:
                        parts += (
                            name,
                            brackets,
                            separator.join(texts[start:stop]),
                            closing_brackets,
                        )
                parts += (b'},"latency_ms":', latency, closing)
            except RecordError as error:
                encoded.append(error)
            else:
                encoded.append(b"".join(parts))
            start = stop
        return encoded

    def _encode_sliced(
        self,
        decoded: Sequence[DecodedRecord],
        outputs: Mapping[str, np.ndarray],
        counts: Sequence[int],
        latency_ms: Sequence[float],
        opening: bytes,
        names: list[bytes],
        closing: bytes,
    ) -> list[Encoded | RecordError]:
        columns = list(zip(names, outputs.values(), strict=True))
        encoded: list[Encoded | RecordError] = []
        start = 0
        for record, count, latency in zip(decoded, counts, latency_ms, strict=True):
            stop = start + count
            try:
                parts = [b'{"id":', dumps(record.id), opening]
                for name, array in columns:
                    parts += (name, dumps(array[start:stop]))
                parts += (b'},"latency_ms":', dumps(round(latency, 3)), closing)
            except RecordError as error:
                encoded.append(error)
            else:
                encoded.append(b"".join(parts))
            start = stop
        return encoded


def _split_rows(array: np.ndarray, rows: int) -> tuple[list[bytes], bytes, bytes] | None:
    """One ``dumps`` of a whole numeric output, cut into the text of each row:
    ``(texts, brackets, separator)`` such that ``dumps(array[a:b])`` is exactly
    ``brackets + separator.join(texts[a:b]) + closing brackets``. None when the array
    cannot be cut this way (no rows, empty dimensions, strings)."""
    if array.ndim == 0 or array.size == 0 or array.shape[0] != rows or array.dtype == object:
        return None
    depth = array.ndim
    text = dumps(array)
    # Numbers, true/false and null hold no brackets or commas: rows are separated by
    # ``]...],[...[`` (depth - 1 brackets each side) and nothing else matches that.
    separator = b"]" * (depth - 1) + b"," + b"[" * (depth - 1)
    texts = text[depth:-depth].split(separator)
    if len(texts) != rows:
        return None
    return texts, b"[" * depth, separator


def _split_numbers(values: Sequence[float]) -> list[bytes]:
    """``dumps`` of each number, from one ``dumps`` of the list."""
    if not values:
        return []
    return dumps(values)[1:-1].split(b",")


def _check_rows(tensors: Mapping[str, np.ndarray]) -> None:
    leading = {name: (array.shape[0] if array.ndim else None) for name, array in tensors.items()}
    if any(rows is None for rows in leading.values()):
        raise RecordError(DECODE, "every input needs a batch dimension (wrap one row in a list)")
    if len(set(leading.values())) != 1:
        raise RecordError(DECODE, f"inputs disagree on the number of rows: {leading}")
    if next(iter(leading.values())) == 0:
        raise RecordError(DECODE, "inputs have zero rows")


def _jsonable(array: np.ndarray) -> object:
    # orjson writes numeric arrays itself (fast); object arrays need element conversion.
    return array.tolist() if array.dtype == object else array
