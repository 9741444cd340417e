"""Prediction fields: which model outputs the output record gets, under which names.

An ``[outputs]`` table (or ``--output-field NAME=SOURCE``) names them; SOURCE is

- a model output, ``probabilities``: its value per row (a scalar when one value per
  row, else a list);
- one column of an output, ``probabilities[1]`` (e.g. the positive class's score);
- ``$model_name``, ``$model_version``, ``$mode`` or ``$latency_ms``.

A ``:double``, ``:long``, ``:string`` or ``:boolean`` suffix fixes the field's type;
otherwise it comes from the model's signature (the output's dtype and shape), or is
``double`` when the signature is not known. Without a table, every output of the
signature becomes a field of its name, plus ``model_version``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np

from streamserve.errors import InvalidArgument
from streamserve.runtimes.base import Signature, TensorSpec
from streamserve.stream.codecs.formats import FieldKind, PredictionField

METADATA: dict[str, FieldKind] = {
    "model_name": "string",
    "model_version": "long",
    "mode": "string",
    "latency_ms": "double",
}
KINDS: tuple[FieldKind, ...] = ("double", "long", "string", "boolean")
_SOURCE = re.compile(r"^(?P<output>[^\[\]:$]+|\$[a-z_]+)(\[(?P<column>\d+)\])?(:(?P<kind>\w+))?$")


@dataclass(frozen=True)
class FieldSource:
    """Where one prediction field's value comes from: model output ``output`` (column
    ``column`` of it, or all of it), or the ``metadata`` item."""

    field: PredictionField
    output: str | None = None
    column: int | None = None
    metadata: str | None = None


def parse_source(name: str, text: str, signature: Signature | None) -> FieldSource:
    """One ``NAME = SOURCE`` entry (see the module docstring)."""
    match = _SOURCE.match(text.strip())
    if not name or match is None:
        raise InvalidArgument(
            f"output field {name}={text!r}: SOURCE is an output, output[i], $model_name, "
            "$model_version, $mode or $latency_ms, optionally with :double/:long/:string/:boolean"
        )
    source, column, kind = match["output"], match["column"], match["kind"]
    if kind is not None and kind not in KINDS:
        raise InvalidArgument(f"output field {name}: type {kind!r} is not one of {KINDS}")
    if source.startswith("$"):
        item = source[1:]
        if item not in METADATA or column is not None:
            raise InvalidArgument(
                f"output field {name}: {source} is not one of ${', $'.join(METADATA)}"
            )
        return FieldSource(
            PredictionField(name, cast(FieldKind, kind or METADATA[item])), metadata=item
        )
    spec = _output_spec(name, source, signature)
    index = None if column is None else int(column)
    field = _field(name, spec, index, cast("FieldKind | None", kind))
    return FieldSource(field, output=source, column=index)


def _output_spec(name: str, output: str, signature: Signature | None) -> TensorSpec | None:
    if signature is None:
        return None
    spec = signature.outputs.get(output)
    if spec is None:
        known = ", ".join(sorted(signature.outputs))
        raise InvalidArgument(f"output field {name}: the model has no output {output!r} ({known})")
    return spec


def _field(
    name: str, spec: TensorSpec | None, column: int | None, kind: FieldKind | None
) -> PredictionField:
    if spec is None:
        return PredictionField(name, kind or "double", repeated=column is None)
    per_row = spec.shape[1:] if spec.shape is not None else None
    repeated = column is None and (per_row is None or any(size != 1 for size in per_row))
    return PredictionField(name, kind or kind_of(spec.dtype), repeated)


def kind_of(dtype: np.dtype) -> FieldKind:
    if dtype.kind == "f":
        return "double"
    if dtype.kind in "iu":
        return "long"
    if dtype.kind == "b":
        return "boolean"
    return "string"


def default_sources(signature: Signature | None) -> list[FieldSource]:
    """Every output of the signature by its name, plus ``model_version``."""
    if signature is None:
        raise InvalidArgument(
            "the model's signature is not known: name the prediction fields with an "
            "[outputs] table or --output-field NAME=SOURCE"
        )
    sources = [parse_source(name, name, signature) for name in signature.outputs]
    return [*sources, parse_source("model_version", "$model_version", signature)]


class PredictionFields:
    """Model outputs of a micro-batch → each record's prediction field values."""

    def __init__(self, sources: Sequence[FieldSource]) -> None:
        names = [source.field.name for source in sources]
        if len(set(names)) != len(names):
            raise InvalidArgument(f"output fields named twice: {names}")
        self.sources = tuple(sources)
        self.fields = tuple(source.field for source in sources)
        self.names = frozenset(names)

    def rows(
        self,
        outputs: Mapping[str, np.ndarray],
        count: int,
        model_name: str,
        version: int,
        latency_ms: Sequence[float],
        mode: str,
    ) -> list[dict[str, Any]]:
        """``count`` dicts (one per record, one row each) of field name → value."""
        metadata = {"model_name": model_name, "model_version": version, "mode": mode}
        columns: list[list[Any]] = []
        for source in self.sources:
            if source.metadata == "latency_ms":
                columns.append([round(latency, 3) for latency in latency_ms])
            elif source.metadata is not None:
                columns.append([metadata[source.metadata]] * count)
            else:
                columns.append(_values(source, outputs, count))
        names = [field.name for field in self.fields]
        return [dict(zip(names, row, strict=True)) for row in zip(*columns, strict=True)]


def _values(source: FieldSource, outputs: Mapping[str, np.ndarray], count: int) -> list[Any]:
    assert source.output is not None
    try:
        array = np.asarray(outputs[source.output])
    except KeyError:
        raise InvalidArgument(
            f"output field {source.field.name}: the model returned no {source.output!r} "
            f"(it returned {sorted(outputs)})"
        ) from None
    rows = array.reshape(count, -1)
    if source.column is not None:
        if source.column >= rows.shape[1]:
            raise InvalidArgument(
                f"output field {source.field.name}: {source.output} has {rows.shape[1]} "
                f"columns, not {source.column + 1}"
            )
        values = rows[:, source.column]
    elif source.field.repeated:
        values = rows
    else:
        values = rows[:, 0]
    return _python(values, source.field.kind)


def _python(values: np.ndarray, kind: FieldKind) -> list[Any]:
    if kind == "string":
        return (
            [_text(v) for v in values.tolist()]
            if values.ndim == 1
            else [[_text(v) for v in row] for row in values.tolist()]
        )
    target = {"double": np.float64, "long": np.int64, "boolean": np.bool_}[kind]
    return cast(list[Any], values.astype(target).tolist())


def _text(value: object) -> str:
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)
