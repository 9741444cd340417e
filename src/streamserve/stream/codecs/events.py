"""The event codec: records of any :class:`~.formats.RecordFormat` in, records of the same
format out — a format, the feature mapping and the prediction fields, put together.

Per consumed batch (one call each, the processor's fast path):

1. ``prepare``: when a value names a schema not seen yet, the format resolves it in a
   worker thread (registry I/O happens here only; an unreachable registry raises
   :class:`~streamserve.stream.errors.DependencyUnavailable` and the processor waits);
2. ``decode_stacked``: each value → a dict (``format.decode``), the dicts → one array per
   model input (:class:`~.features.FeatureMapping`), so a model call needs no concat;
3. ``encode_batch``: the prediction fields of each row (:class:`~.predictions.PredictionFields`)
   are added to the input record (``enriched``) or make the record with its id
   (``prediction``), and ``format.encode`` writes it in the output schema.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from streamserve.errors import StreamserveError
from streamserve.stream.codecs.base import (
    DECODE,
    ENCODE,
    PLAIN_IDS,
    DecodedRecord,
    Encoded,
    InputRecord,
    RecordId,
    StackedBatch,
)
from streamserve.stream.codecs.features import FeatureMapping
from streamserve.stream.codecs.formats import OutputLayout, RecordFormat, SchemaKey
from streamserve.stream.codecs.predictions import PredictionFields
from streamserve.stream.errors import RecordError


@dataclass(slots=True)
class EventRecord(DecodedRecord):
    """A decoded event: its inputs, plus the record itself and its writer schema."""

    record: dict[str, Any] | None = None
    schema: SchemaKey = None


class EventCodec:
    """A :class:`~streamserve.stream.codecs.base.RecordCodec` for structured records."""

    def __init__(
        self,
        record_format: RecordFormat,
        features: FeatureMapping,
        predictions: PredictionFields,
        layout: OutputLayout,
        signature_name: str | None = None,
    ) -> None:
        self.format = record_format
        self.features = features
        self.predictions = predictions
        self.layout = layout
        self.signature_name = signature_name
        self._id_field = layout.id_field

    async def prepare(self, records: Sequence[InputRecord]) -> None:
        """Resolve the schemas the batch names (off the event loop), when any is new."""
        values = [record.value for record in records]
        if self.format.needs_resolve(values):
            await asyncio.to_thread(self.format.resolve, values)

    async def decode(self, record: InputRecord) -> DecodedRecord:
        await self.prepare([record])
        (decoded,) = self.decode_stacked([record]).records
        if isinstance(decoded, RecordError):
            raise decoded
        return decoded

    def decode_stacked(self, records: Sequence[InputRecord]) -> StackedBatch:
        """Every record decoded, and the good ones' inputs stacked (one row each)."""
        parsed = [self._parse(record) for record in records]
        documents = [item[0] for item in parsed if not isinstance(item, RecordError)]
        columns, errors = self.features.columns(documents)
        outcome: list[DecodedRecord | RecordError] = []
        names = list(columns)
        views = iter(zip(*(list(_row_views(array)) for array in columns.values()), strict=True))
        feature_errors = iter(errors)
        for record, item in zip(records, parsed, strict=True):
            if isinstance(item, RecordError):
                outcome.append(item)
                continue
            error = next(feature_errors)
            if error is not None:
                outcome.append(error)
                continue
            document, schema = item
            inputs = dict(zip(names, next(views), strict=True))
            outcome.append(
                EventRecord(self._id(document, record), None, inputs, {}, document, schema)
            )
        if not columns or not any(error is None for error in errors):
            return StackedBatch(outcome)
        return StackedBatch(outcome, columns, 1)

    def _parse(self, record: InputRecord) -> tuple[dict[str, Any], SchemaKey] | RecordError:
        try:
            return self.format.decode(record.value)
        except RecordError as error:
            return error
        except Exception as error:  # a format's own bug must not stop the stream
            name = type(error).__name__
            return RecordError(DECODE, str(error) or name, name)

    def _id(self, document: Mapping[str, Any], record: InputRecord) -> RecordId:
        value = document.get(self._id_field)
        return value if type(value) in PLAIN_IDS else record.position

    def encode(
        self,
        decoded: DecodedRecord,
        rows: Mapping[str, np.ndarray],
        model_name: str,
        version: int,
        latency_ms: float,
        mode: str,
    ) -> Encoded:
        (encoded,) = self.encode_batch(
            [decoded], rows, [1], model_name, version, [latency_ms], mode
        )
        if isinstance(encoded, RecordError):
            raise encoded
        return encoded

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
        try:
            fields = self.predictions.rows(
                outputs, len(decoded), model_name, version, latency_ms, mode
            )
        except (StreamserveError, ValueError) as exc:
            error = RecordError(ENCODE, str(exc), type(exc).__name__)
            return [error] * len(decoded)
        return [self._encode_one(record, row) for record, row in zip(decoded, fields, strict=True)]

    def _encode_one(self, decoded: DecodedRecord, fields: dict[str, Any]) -> Encoded | RecordError:
        assert isinstance(decoded, EventRecord) and decoded.record is not None
        record = decoded.record
        if self.layout.enriched:
            clash = self.predictions.names.intersection(record)
            if clash:
                return _clash(sorted(clash))
            output = {**record, **fields}
        elif self._id_field in record:
            output = {self._id_field: record[self._id_field], **fields}
        else:
            output = fields
        try:
            return self.format.encode(output, decoded.schema)
        except RecordError as error:
            return error
        except Exception as error:
            name = type(error).__name__
            return RecordError(ENCODE, str(error) or name, name)


def _clash(names: list[str]) -> RecordError:
    first = names[0]
    return RecordError(
        ENCODE,
        f"prediction field(s) {names} are already fields of the input record; name them "
        f"otherwise, e.g. --output-field predicted_{first}=<source>",
    )


def _row_views(array: np.ndarray) -> list[np.ndarray]:
    """Each row of ``array`` as a view of shape ``[1, ...]`` (one record's inputs)."""
    return list(array.reshape(array.shape[0], 1, *array.shape[1:]))
