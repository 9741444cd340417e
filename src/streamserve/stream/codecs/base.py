"""The codec protocol: Kafka record bytes ⇄ model tensors, one replaceable step each way.

A :class:`RecordCodec` turns one consumed :class:`InputRecord` into named input tensors
(``decode``) and one record's rows of the model's outputs into the output value
(``encode``). Anything wrong with one record raises
:class:`~streamserve.stream.errors.RecordError`, which sends that record to the DLQ.

The processor sees only this module: the batch helpers here (:func:`stacked_decoder`,
:func:`batch_encoder`, :func:`batch_preparer`) find a codec's optional fast paths.
"""

from __future__ import annotations

import base64
import inspect
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Literal, NamedTuple, Protocol, cast, runtime_checkable

import numpy as np
import orjson

from streamserve.stream.errors import RecordError

DECODE = "decode"
ENCODE = "encode"

RecordId = str | int | float | None
PLAIN_IDS = (str, int, float)  # an id of exactly these types needs no further check


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


BatchPreparer = Callable[[Sequence[InputRecord]], Awaitable[None]]


def batch_preparer(codec: object) -> BatchPreparer | None:
    """The codec's ``async prepare(records)``, or None. The processor awaits it before it
    decodes a consumed batch: it resolves what the batch needs from outside (schemas from a
    registry) and raises :class:`~streamserve.stream.errors.DependencyUnavailable` when
    that cannot be reached; the processor then holds the batch, pauses and retries."""
    prepare = getattr(codec, "prepare", None)
    if prepare is None or not inspect.iscoroutinefunction(prepare):
        return None
    return cast(BatchPreparer, prepare)


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


def record_id_of(document: Mapping[str, Any], record: InputRecord) -> RecordId:
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
