"""What a record format is: bytes ⇄ records (dicts), with the schemas they name.

A :class:`RecordFormat` knows bytes and schemas, and neither the model (the feature
mapping in :mod:`~streamserve.stream.codecs.features` does) nor Kafka. The event codec
(:mod:`~streamserve.stream.codecs.events`) puts a format, the features and the prediction
fields together into a :class:`~streamserve.stream.codecs.base.RecordCodec`.

The output record is written in the input's format. Its schema is derived from the schema
the input record was written with (its *writer schema*) and the :class:`OutputLayout`:
``enriched`` keeps every input field and adds the prediction fields; ``prediction`` holds
the id field (when the input has it) and the prediction fields.

Schemas are fetched, derived and registered only in :meth:`RecordFormat.resolve`, which
the processor runs in a worker thread before it decodes a batch, never per record:
``decode`` and ``encode`` use what ``resolve`` cached and do no I/O.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:
    from streamserve.stream.codecs.registry import Registry, SubjectStrategy

FieldKind = Literal["double", "long", "string", "boolean"]
"""Scalar type of a prediction field (Avro ``double``/``long``/``string``/``boolean``,
Protobuf ``double``/``int64``/``string``/``bool``, JSON Schema ``number``/``integer``/
``string``/``boolean``)."""

SchemaKey = Hashable
"""What ``decode`` returns beside the record and ``encode`` takes back: which writer
schema the input had (e.g. its registry id), so ``encode`` picks the derived output schema."""


@dataclass(frozen=True)
class PredictionField:
    """One field the output record gets from the prediction: ``name`` in the output record,
    its scalar ``kind``, a list of them when ``repeated`` (a model output with several
    values per row). Prediction fields are always present (never null)."""

    name: str
    kind: FieldKind
    repeated: bool = False


@dataclass(frozen=True)
class OutputLayout:
    """The output record: the input's fields plus ``fields`` (``enriched``), or the input's
    ``id_field`` (when it has one) plus ``fields`` (``prediction``)."""

    fields: tuple[PredictionField, ...]
    enriched: bool = True
    id_field: str = "id"


@dataclass(frozen=True)
class FormatOptions:
    """What every format's ``create(options)`` takes.

    ``registry``: the Schema Registry (None: no registry; a schema format then needs
    ``input_schema``). ``output_topic`` and ``subject_strategy`` name the output subject.
    ``input_schema``: a fixed writer schema file (Avro ``.avsc``, a Protobuf descriptor
    set or ``.proto``, a JSON Schema); values are then plain (no framing) or in the
    Confluent framing, whose id is ignored. ``output_schema``: where the derived output
    schema is written in that mode. ``message_type``: Protobuf's message full name when
    the schema file holds several."""

    layout: OutputLayout
    output_topic: str
    registry: Registry | None = None
    subject_strategy: SubjectStrategy = "topic"
    input_schema: Path | None = None
    output_schema: Path | None = None
    message_type: str | None = None


class RecordFormat(Protocol):
    """Bytes ⇄ records of one wire format. See the module docstring for the contract.

    Errors: ``decode`` and ``encode`` raise
    :class:`~streamserve.stream.errors.RecordError` for one bad record (not in the wire
    format, an unknown schema id, a value the schema refuses, an output field that
    clashes with an input field); ``resolve`` raises
    :class:`~streamserve.stream.errors.DependencyUnavailable` when the registry cannot be
    reached (never a ``RecordError``: the records are not at fault).
    """

    name: str
    """The ``--input-format`` value: ``json``, ``avro``, ``protobuf``, ``json-schema``."""

    def needs_resolve(self, values: Sequence[bytes | None]) -> bool:
        """Cheap, on the hot path: does any value name a schema not resolved yet?"""
        ...

    def resolve(self, values: Sequence[bytes | None]) -> None:
        """May block on I/O (runs in a worker thread): fetch every writer schema these
        values name (once per schema id), derive each one's output schema and register it
        under the output subject. An id the registry does not know is remembered as
        unknown, so ``decode`` raises ``RecordError`` for it (and ``resolve`` does not ask
        again)."""
        ...

    def decode(self, value: bytes | None) -> tuple[dict[str, Any], SchemaKey]:
        """The record as a dict (nested records as dicts) and its writer schema's key."""
        ...

    def encode(self, record: Mapping[str, Any], schema: SchemaKey) -> bytes:
        """The output record (already laid out: input fields and/or prediction fields)
        in the output schema derived from ``schema``, in this format's wire form."""
        ...

    def output_schema_text(self, schema: SchemaKey) -> str | None:
        """The derived output schema for ``schema`` (for a schema file or a log line);
        None for a format without schemas."""
        ...
