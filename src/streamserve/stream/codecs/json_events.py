"""Plain JSON events (``--input-format json``): one JSON object per record, no schema.

``{"txn_id": "t1", "amount": 12.5, "merchant": {"category": "food"}}`` decodes to that
dict; the output record (already laid out by the event codec) is written as JSON bytes.
There is no schema to fetch, derive or register: ``needs_resolve`` is always False.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from streamserve.stream.codecs.base import dumps, parse_json_object
from streamserve.stream.codecs.formats import FormatOptions, SchemaKey


class JsonFormat:
    """A :class:`~streamserve.stream.codecs.formats.RecordFormat` for plain JSON objects."""

    name = "json"

    def __init__(self, options: FormatOptions | None = None) -> None:
        self.options = options

    def needs_resolve(self, values: Sequence[bytes | None]) -> bool:
        return False

    def resolve(self, values: Sequence[bytes | None]) -> None:
        return None

    def decode(self, value: bytes | None) -> tuple[dict[str, Any], SchemaKey]:
        """The value as a dict; ``RecordError`` for a tombstone, not-JSON, not an object."""
        return parse_json_object(value), None

    def encode(self, record: Mapping[str, Any], schema: SchemaKey) -> bytes:
        return dumps(record if isinstance(record, dict) else dict(record))

    def output_schema_text(self, schema: SchemaKey) -> str | None:
        return None


def create(options: FormatOptions) -> JsonFormat:
    return JsonFormat(options)
