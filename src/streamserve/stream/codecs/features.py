"""Features, declared: which record fields feed which model input.

A ``[features]`` table (or ``--feature INPUT=FIELD[,FIELD...]``) maps fields to inputs:

- ``x = ["amount", "age", "merchant.risk"]`` stacks several fields into one input of
  shape ``[rows, 3]`` (dotted paths reach into nested records);
- ``amount = "amount"`` gives one field its own named input (ONNX-converted scikit-learn
  pipelines and ``model.py`` models take named columns, strings included): shape
  ``[rows]``, or ``[rows, 1]`` when the model's signature says rank 2.

The dtype of each input comes from the model's signature (``float32`` for numbers
without one; strings become UTF-8 ``bytes``, as in the tensor codec). ``defaults`` fill
optional fields; a missing or null field without a default is the record's fault
(``RecordError`` naming the field). Without a table, the signature's input names are
matched to the record's top-level fields.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from streamserve.errors import InvalidArgument
from streamserve.runtimes.base import Signature, TensorSpec
from streamserve.stream.codecs.base import DECODE
from streamserve.stream.errors import RecordError

_MISSING = object()
_FLOAT32 = np.dtype(np.float32)


@dataclass(frozen=True)
class Feature:
    """One model input: ``fields`` (dotted paths) stacked along the last dimension when
    ``stacked`` (declared as a list), else the one field as it is."""

    input: str
    fields: tuple[str, ...]
    stacked: bool = False

    @classmethod
    def parse(cls, input_name: str, value: Any, where: str = "[features]") -> Feature:
        """From a table entry: a field name, or a list of them (stacked)."""
        if isinstance(value, str) and value:
            return cls(input_name, (value,))
        if isinstance(value, list) and value and all(isinstance(v, str) and v for v in value):
            return cls(input_name, tuple(value), stacked=True)
        raise InvalidArgument(f"{where}: {input_name} must be a field name or a list of them")

    @classmethod
    def from_flag(cls, text: str) -> Feature:
        """``INPUT=FIELD`` or ``INPUT=FIELD,FIELD,...`` (stacked)."""
        name, _, fields = text.partition("=")
        names = [field.strip() for field in fields.split(",") if field.strip()]
        if not name.strip() or not names:
            raise InvalidArgument(f"--feature {text!r}: expected INPUT=FIELD[,FIELD...]")
        return cls(name.strip(), tuple(names), stacked="," in fields)


class FeatureMapping:
    """Records (dicts) → one array per model input, plus which records could not."""

    def __init__(
        self,
        features: Sequence[Feature],
        defaults: Mapping[str, Any] | None = None,
        inputs: Mapping[str, TensorSpec] | None = None,
    ) -> None:
        if not features:
            raise InvalidArgument(
                "no features: declare a [features] table (or --feature INPUT=FIELD[,FIELD...]) "
                "mapping record fields to the model's inputs"
            )
        self.features = tuple(features)
        self.defaults = dict(defaults or {})
        specs = inputs or {}
        self._columns = [_Column(feature, specs.get(feature.input)) for feature in features]

    @classmethod
    def from_signature(
        cls, signature: Signature | None, defaults: Mapping[str, Any] | None = None
    ) -> FeatureMapping:
        """No table: each of the signature's inputs is the top-level field of that name."""
        if signature is None:
            raise InvalidArgument(
                "the model's signature is not known, so its inputs cannot be matched to "
                "record fields: declare a [features] table or --feature INPUT=FIELD[,...]"
            )
        features = [Feature(name, (name,)) for name in signature.inputs]
        return cls(features, defaults, signature.inputs)

    def columns(
        self, records: Sequence[Mapping[str, Any]]
    ) -> tuple[dict[str, np.ndarray], list[RecordError | None]]:
        """One array per input over the records that have every field; per record, None or
        why it has not (those records' rows are left out of the arrays)."""
        errors: list[RecordError | None] = [None] * len(records)
        values = [column.values(records, errors, self.defaults) for column in self._columns]
        while True:  # each pass that fails marks the records at fault, so this ends
            good = [i for i, error in enumerate(errors) if error is None]
            arrays: dict[str, np.ndarray] = {}
            for column, column_values in zip(self._columns, values, strict=True):
                kept = (
                    column_values if len(good) == len(records) else [column_values[i] for i in good]
                )
                array = column.array(kept, good, errors)
                if array is None:
                    break
                arrays[column.feature.input] = array
            else:
                return arrays, errors


class _Column:
    def __init__(self, feature: Feature, spec: TensorSpec | None) -> None:
        self.feature = feature
        self.paths = [tuple(field.split(".")) for field in feature.fields]
        self.dtype = spec.dtype if spec is not None else None
        rank = len(spec.shape) if spec is not None and spec.shape is not None else None
        self.column_shape = not feature.stacked and rank == 2  # one field as [rows, 1]

    def values(
        self,
        records: Sequence[Mapping[str, Any]],
        errors: list[RecordError | None],
        defaults: Mapping[str, Any],
    ) -> list[Any]:
        fields, paths = self.feature.fields, self.paths
        values: list[Any] = []
        for index, record in enumerate(records):
            row = [_lookup(record, path) for path in paths]
            for position, value in enumerate(row):
                if value is None or value is _MISSING:
                    field = fields[position]
                    default = defaults.get(field, _MISSING)
                    if default is _MISSING:
                        if errors[index] is None:
                            errors[index] = RecordError(DECODE, self._missing(field, value))
                        row = [0] * len(row)
                        break
                    row[position] = default
            values.append(row if self.feature.stacked else row[0])
        return values

    def array(
        self, values: list[Any], good: list[int], errors: list[RecordError | None]
    ) -> np.ndarray | None:
        """The input array of ``values`` (the records ``good``); None after marking in
        ``errors`` the records whose values do not convert or do not stack with the rest."""
        try:
            array = self._convert(values)
        except (TypeError, ValueError, OverflowError):
            self._mark_misfits(values, good, errors)
            return None
        if self.column_shape and array.ndim == 1:
            array = array.reshape(-1, 1)
        return array

    def _mark_misfits(
        self, values: list[Any], good: list[int], errors: list[RecordError | None]
    ) -> None:
        shapes: dict[int, tuple[int, ...]] = {}
        for index, value in zip(good, values, strict=True):
            try:
                shapes[index] = self._convert([value]).shape
            except (TypeError, ValueError, OverflowError) as exc:
                errors[index] = self._error(f"{exc}", type(exc).__name__)
        common = Counter(shapes.values()).most_common(1)
        for index, shape in shapes.items():
            if common and shape != common[0][0]:
                errors[index] = self._error(f"shape {shape[1:]} differs from {common[0][0][1:]}")

    def _missing(self, field: str, value: object) -> str:
        state = "missing" if value is _MISSING else "null"
        return f"required field {field!r} is {state} (input {self.feature.input!r})"

    def _error(self, reason: str, exception_name: str = "") -> RecordError:
        fields = ", ".join(self.feature.fields)
        wanted = self.dtype or "numbers"
        return RecordError(
            DECODE,
            f"field(s) {fields} do not fit input {self.feature.input!r} ({wanted}): {reason}",
            exception_name,
        )

    def _convert(self, values: list[Any]) -> np.ndarray:
        dtype = self.dtype
        if (dtype is not None and dtype.kind in "OSU") or (dtype is None and _has_text(values)):
            return _text_array(values)
        array = np.asarray(values, dtype=dtype if dtype is not None else None)
        if array.dtype.kind in "OSU":
            raise ValueError("not a number")
        if dtype is None and array.dtype.kind == "f":
            return array.astype(_FLOAT32)
        if dtype is None and array.dtype.kind not in "biuf":
            raise ValueError(f"cannot use {array.dtype} values")
        return array


def _lookup(record: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = record
    for key in path:
        if not isinstance(value, Mapping):
            return _MISSING
        value = value.get(key, _MISSING)
        if value is _MISSING:
            return _MISSING
    return value


def _has_text(values: list[Any]) -> bool:
    return bool(values) and isinstance(values[0], str | bytes)


def _text_array(values: list[Any]) -> np.ndarray:
    array = np.empty(len(values), dtype=object)
    array[:] = [_utf8(value) for value in values]
    return array


def _utf8(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, list):
        raise ValueError("a list where a string field was expected")
    return str(value).encode("utf-8")
