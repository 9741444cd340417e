"""Record codecs: Kafka record bytes ⇄ model tensors, one replaceable step each way.

A :class:`RecordCodec` turns one consumed :class:`InputRecord` into named input tensors
(``decode``) and one record's rows of the model's outputs into the output value
(``encode``). Anything wrong with one record raises
:class:`~streamserve.stream.errors.RecordError`, which sends that record to the DLQ.

Shipped codecs:

- :class:`TensorJsonCodec` — ``{"id": ..., "inputs": {name: nested list}}`` (TF Serving's
  columnar JSON with the batch dimension; one record is one row or a small batch) →
  ``{"id", "model": {"name", "version"}, "outputs": {name: nested list}, "latency_ms", "mode"}``.
- :class:`ImageCodec` — a file path / ``file://`` / ``http(s)://`` string, JSON
  ``{"id", "url"|"path"|"b64"}`` or raw image bytes → ``{"images": [bytes]}``;
  output ``{"id", "source", "model", "predictions": [{"label", "score"}], "latency_ms",
  "mode"}`` or, with ``output_format="classic"``, the classic example's
  ``[label=score, ...]`` string.
- :class:`CallableCodec` — plug in two plain functions.
"""

from __future__ import annotations

import base64
import binascii
import inspect
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Literal, NamedTuple, Protocol, cast, runtime_checkable

import numpy as np
import orjson

from streamserve.stream.errors import RecordError
from streamserve.stream.fetch import check_image, sniff_image_format

DECODE = "decode"
ENCODE = "encode"

RecordId = str | int | float | None
_PLAIN_IDS = (str, int, float)  # an id of exactly these types needs no further check


class InputRecord(NamedTuple):
    """One consumed Kafka record, independent of the Kafka client library (a named tuple:
    one is built per consumed record, and a tuple costs a fraction of a dataclass)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes | None]] = ()
    timestamp_ms: int | None = None

    @property
    def position(self) -> str:
        return f"{self.topic}[{self.partition}]@{self.offset}"


@dataclass(slots=True)
class DecodedRecord:
    """What a codec made of one record: an id, where it came from, and its input rows."""

    id: RecordId
    source: str | None
    inputs: dict[str, np.ndarray]
    extra: dict[str, Any] = field(default_factory=dict)  # codec-private context

    @property
    def rows(self) -> int:
        """Rows along dim 0 (all inputs agree; checked by the codecs)."""
        first = next(iter(self.inputs.values()), None)
        return 1 if first is None or first.ndim == 0 else int(first.shape[0])


class SameKey(Enum):
    """The output keeps the input record's key (:attr:`OutputRecord.key`'s default)."""

    INPUT = "input"


@dataclass(frozen=True)
class OutputRecord:
    """What ``encode`` may return instead of plain bytes: the value plus, optionally, the
    output's key (default: the input's), extra headers (added after the carried input
    headers and the ``streamserve.model.*`` ones) and topic (default: the output topic).
    A topic other than the output topic must be declared in the codec's
    ``output_topics``, so the processor can make sure it exists before it starts."""

    value: bytes | None
    key: bytes | Literal[SameKey.INPUT] | None = SameKey.INPUT
    headers: Sequence[tuple[str, bytes]] = ()
    topic: str | None = None


Encoded = bytes | OutputRecord


def declared_output_topics(codec: object) -> tuple[str, ...]:
    """The topics a codec may route outputs to besides the output topic (its optional
    ``output_topics`` attribute)."""
    return tuple(getattr(codec, "output_topics", ()) or ())


BatchDecoder = Callable[[Sequence[InputRecord]], "list[DecodedRecord | RecordError]"]


def batch_decoder(codec: object) -> BatchDecoder | None:
    """The codec's synchronous ``decode_batch`` (one call per consumed batch, the fast
    path), or None: the processor then awaits ``decode`` per record, concurrently."""
    decode_batch = getattr(codec, "decode_batch", None)
    if decode_batch is None or inspect.iscoroutinefunction(decode_batch):
        return None
    return cast(BatchDecoder, decode_batch)


class StackedBatch(NamedTuple):
    """A consumed batch decoded in one call: per record its decoded form or why not, and,
    when every decoded record's inputs are consecutive rows of one array per input (the
    fast path), those arrays (``rows`` rows per record), so a model call needs no concat."""

    records: list[DecodedRecord | RecordError]
    stacked: dict[str, np.ndarray] | None = None
    rows: int = 1


StackedDecoder = Callable[[Sequence[InputRecord]], StackedBatch]


def stacked_decoder(codec: object) -> StackedDecoder | None:
    """The codec's ``decode_stacked`` (records plus their stacked inputs), else one made
    of its synchronous ``decode_batch``; None when it has neither (per-record ``decode``)."""
    decode_stacked = getattr(codec, "decode_stacked", None)
    if decode_stacked is not None and not inspect.iscoroutinefunction(decode_stacked):
        return cast(StackedDecoder, decode_stacked)
    decode_batch = batch_decoder(codec)
    if decode_batch is None:
        return None
    return lambda records: StackedBatch(decode_batch(records))


BatchEncoder = Callable[
    [
        Sequence[DecodedRecord],
        Mapping[str, np.ndarray],
        Sequence[int],
        str,
        int,
        Sequence[float],
        str,
    ],
    "list[Encoded | RecordError]",
]


def batch_encoder(codec: RecordCodec) -> BatchEncoder:
    """The codec's ``encode_batch``, or one that calls its ``encode`` per record."""
    encode_batch = getattr(codec, "encode_batch", None)
    if encode_batch is not None:
        return cast(BatchEncoder, encode_batch)
    return lambda *args: encode_each(codec, *args)


def encode_each(
    codec: RecordCodec,
    decoded: Sequence[DecodedRecord],
    outputs: Mapping[str, np.ndarray],
    counts: Sequence[int],
    model_name: str,
    version: int,
    latency_ms: Sequence[float],
    mode: str,
) -> list[Encoded | RecordError]:
    """``encode_batch`` for a codec that encodes one record at a time: each record gets its
    rows of the stacked ``outputs`` (``counts[i]`` rows for record i; a lone record gets
    the outputs unsliced); an exception becomes that record's ``RecordError``."""
    encoded: list[Encoded | RecordError] = []
    start = 0
    for record, count, latency in zip(decoded, counts, latency_ms, strict=True):
        rows = (
            outputs
            if len(decoded) == 1
            else {name: array[start : start + count] for name, array in outputs.items()}
        )
        start += count
        try:
            encoded.append(codec.encode(record, rows, model_name, version, latency, mode))
        except RecordError as error:
            encoded.append(error)
        except Exception as error:
            name = type(error).__name__
            encoded.append(RecordError(ENCODE, str(error) or name, name))
    return encoded


@runtime_checkable
class RecordCodec(Protocol):
    """Decode one record into tensors; encode one record's output rows into bytes (or an
    :class:`OutputRecord` to set the output's key, headers or topic). A codec that routes
    to other topics names them all in an ``output_topics`` attribute.

    Optional, for speed: a synchronous ``decode_batch`` (or ``decode_stacked``, see
    :class:`StackedBatch`) decodes a consumed batch in one call, and ``encode_batch`` (see
    :func:`encode_each`, what the processor uses without one) encodes a model call's
    records in one call."""

    signature_name: str | None

    async def decode(self, record: InputRecord) -> DecodedRecord: ...

    def encode(
        self,
        decoded: DecodedRecord,
        rows: Mapping[str, np.ndarray],
        model_name: str,
        version: int,
        latency_ms: float,
        mode: str,
    ) -> Encoded: ...


def parse_json_object(value: bytes | None) -> dict[str, Any]:
    """The record value as a JSON object, or ``RecordError(stage="decode")``."""
    if value is None:
        raise RecordError(DECODE, "record has no value (tombstone)")
    try:
        document = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise RecordError(DECODE, f"value is not valid JSON: {exc}", type(exc).__name__) from exc
    if not isinstance(document, dict):
        raise RecordError(DECODE, f"value must be a JSON object, got {type(document).__name__}")
    return document


def _record_id(document: Mapping[str, Any], record: InputRecord) -> RecordId:
    record_id = document.get("id")
    if record_id is None:
        return record.position
    if not isinstance(record_id, str | int | float):
        raise RecordError(DECODE, "'id' must be a string or a number")
    return record_id


def _json_default(value: object) -> object:
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return {"b64": base64.b64encode(value).decode("ascii")}
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"cannot encode {type(value).__name__} as JSON")


def dumps(document: object) -> bytes:
    """JSON bytes; numpy arrays natively, ``bytes`` as UTF-8 text or ``{"b64": ...}``."""
    try:
        return orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY, default=_json_default)
    except orjson.JSONEncodeError as exc:
        raise RecordError(
            ENCODE, f"cannot encode output as JSON: {exc}", type(exc).__name__
        ) from exc


# --------------------------------------------------------------------------- tensors


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
                if type(inputs) is dict and inputs and type(record_id) in _PLAIN_IDS:
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
        record_id = _record_id(document, record)
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
        columns = list(zip(names, outputs.values(), strict=True))
        closing = b',"mode":' + dumps(mode) + b"}"
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


# --------------------------------------------------------------------------- images


class ImageFetcherLike(Protocol):
    async def fetch(self, source: str) -> bytes: ...


class ImageCodec:
    """Image references or image bytes in, top-k predictions out.

    ``fetcher`` resolves paths and URLs safely (see :mod:`streamserve.stream.fetch`);
    inline images (raw bytes, ``b64``) get the same content checks. The model's image
    signature takes ``input_name`` (default ``images``, DT_STRING [N] of encoded images)
    and returns ``classes_name`` / ``scores_name`` [N, k].
    """

    def __init__(
        self,
        fetcher: ImageFetcherLike,
        output_format: str = "json",
        signature_name: str | None = None,
        input_name: str = "images",
        classes_name: str = "classes",
        scores_name: str = "scores",
        max_pixels: int = 40_000_000,
    ) -> None:
        if output_format not in ("json", "classic"):
            raise ValueError("output_format must be 'json' or 'classic'")
        self.fetcher = fetcher
        self.output_format = output_format
        self.signature_name = signature_name
        self.input_name = input_name
        self.classes_name = classes_name
        self.scores_name = scores_name
        self.max_pixels = max_pixels

    async def decode(self, record: InputRecord) -> DecodedRecord:
        value = record.value
        if not value:
            raise RecordError(DECODE, "record has no value")
        if sniff_image_format(value) is not None:
            return self._inline(record.position, "bytes", value)
        try:
            text = value.decode("utf-8").strip()
        except UnicodeDecodeError as exc:
            raise RecordError(
                DECODE, "value is neither an image, JSON, nor a path or URL", type(exc).__name__
            ) from exc
        if text.startswith("{"):
            return await self._decode_json(record, text.encode("utf-8"))
        return await self._fetched(record.position, text)

    async def _decode_json(self, record: InputRecord, value: bytes) -> DecodedRecord:
        document = parse_json_object(value)
        record_id = _record_id(document, record)
        given = [key for key in ("url", "path", "b64") if key in document]
        if len(given) != 1:
            raise RecordError(DECODE, "JSON image record needs exactly one of 'url', 'path', 'b64'")
        key = given[0]
        source = document[key]
        if not isinstance(source, str):
            raise RecordError(DECODE, f"'{key}' must be a string")
        if key != "b64":
            return await self._fetched(record_id, source)
        try:
            data = base64.b64decode(source, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise RecordError(
                DECODE, f"'b64' is not valid base64: {exc}", type(exc).__name__
            ) from exc
        return self._inline(record_id, "b64", data)

    async def _fetched(self, record_id: RecordId, source: str) -> DecodedRecord:
        data = await self.fetcher.fetch(source)
        return self._as_input(record_id, source, data)

    def _inline(self, record_id: RecordId, source: str, data: bytes) -> DecodedRecord:
        check_image(data, self.max_pixels)
        return self._as_input(record_id, source, data)

    def _as_input(self, record_id: RecordId, source: str, data: bytes) -> DecodedRecord:
        images = np.empty(1, dtype=object)
        images[0] = data
        return DecodedRecord(record_id, source, {self.input_name: images})

    def encode(
        self,
        decoded: DecodedRecord,
        rows: Mapping[str, np.ndarray],
        model_name: str,
        version: int,
        latency_ms: float,
        mode: str,
    ) -> bytes:
        predictions = self._predictions(rows)
        if self.output_format == "classic":
            return classic_format(predictions).encode("utf-8")
        return dumps(
            {
                "id": decoded.id,
                "source": decoded.source,
                "model": {"name": model_name, "version": version},
                "predictions": predictions,
                "latency_ms": round(latency_ms, 3),
                "mode": mode,
            }
        )

    def _predictions(self, rows: Mapping[str, np.ndarray]) -> list[dict[str, object]]:
        try:
            classes = np.asarray(rows[self.classes_name]).reshape(-1)
            scores = np.asarray(rows[self.scores_name], dtype=np.float64).reshape(-1)
        except KeyError as exc:
            raise RecordError(
                ENCODE, f"model output {exc.args[0]!r} missing (has {sorted(rows)})", "KeyError"
            ) from exc
        if classes.shape != scores.shape:
            raise RecordError(ENCODE, "classes and scores outputs differ in size")
        return [
            {"label": _label_text(label), "score": round(float(score), 6)}
            for label, score in zip(classes, scores, strict=True)
        ]


def _label_text(label: object) -> str:
    if isinstance(label, bytes):
        return label.decode("utf-8", errors="replace")
    return str(label)


def classic_format(predictions: Sequence[Mapping[str, object]]) -> str:
    """The classic Kafka Streams example's output: ``[label=score, label=score, ...]``."""
    return "[" + ", ".join(f"{p['label']}={p['score']}" for p in predictions) + "]"


# --------------------------------------------------------------------------- functions

DecodeFn = Callable[[InputRecord], Awaitable[DecodedRecord]]
EncodeFn = Callable[[DecodedRecord, Mapping[str, np.ndarray], str, int, float, str], Encoded]


class CallableCodec:
    """A codec from two functions, for users who bring their own record formats.

    ``encode`` returns bytes or an :class:`OutputRecord`; ``output_topics`` names every
    topic it may route to besides the output topic."""

    def __init__(
        self,
        decode: DecodeFn,
        encode: EncodeFn,
        signature_name: str | None = None,
        output_topics: Sequence[str] = (),
    ) -> None:
        self._decode = decode
        self._encode = encode
        self.signature_name = signature_name
        self.output_topics = tuple(output_topics)

    async def decode(self, record: InputRecord) -> DecodedRecord:
        return await self._decode(record)

    def encode(
        self,
        decoded: DecodedRecord,
        rows: Mapping[str, np.ndarray],
        model_name: str,
        version: int,
        latency_ms: float,
        mode: str,
    ) -> Encoded:
        return self._encode(decoded, rows, model_name, version, latency_ms, mode)
