"""TF Serving REST JSON ⇄ numpy (``:predict`` bodies), following TF Serving's REST docs.

Requests come in row format (``"instances": [...]``, every input shares dim 0) or columnar
format (``"inputs": ...``). Binary strings are ``{"b64": "..."}``. Responses: row format →
``"predictions"`` (per-row values for a single output, else per-row objects); columnar →
``"outputs"`` (the value for a single output, else an object). Strings come back as UTF-8
text, or ``{"b64": ...}`` for outputs named ``*_bytes`` and for non-UTF-8 data. Floats may be
NaN/Infinity: serialise with a JSON writer that allows them (stdlib ``json`` does; orjson
writes ``null``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import numpy as np

from streamserve.errors import InvalidArgument
from streamserve.tensors._json import array_to_json, is_b64, json_to_array


class _Spec(Protocol):  # runtimes.base.TensorSpec, without importing the core layer
    @property
    def dtype(self) -> np.dtype: ...


def rest_instances_to_numpy(
    instances: object, signature_inputs: Mapping[str, _Spec]
) -> dict[str, np.ndarray]:
    """Decode row-format ``instances`` into one batched array per input."""
    if not isinstance(instances, list) or not instances:
        raise InvalidArgument("'instances' must be a non-empty JSON list")
    if not _is_named(instances[0]):
        name, spec = _single_input(signature_inputs, "instances")
        return {name: json_to_array(instances, spec.dtype, name)}
    names = list(instances[0])
    for index, instance in enumerate(instances):
        if not _is_named(instance) or set(instance) != set(names):
            raise InvalidArgument(
                f"instance {index} must be a JSON object with the same input names as "
                f"instance 0 ({', '.join(sorted(names))})"
            )
    return {
        name: json_to_array(
            [instance[name] for instance in instances], _spec(signature_inputs, name).dtype, name
        )
        for name in names
    }


def rest_inputs_to_numpy(
    inputs: object, signature_inputs: Mapping[str, _Spec]
) -> dict[str, np.ndarray]:
    """Decode columnar ``inputs``: an object of named values, or the single input's value."""
    if not isinstance(inputs, dict) or is_b64(inputs):
        name, spec = _single_input(signature_inputs, "inputs")
        return {name: json_to_array(inputs, spec.dtype, name)}
    if not inputs:
        raise InvalidArgument("'inputs' must name at least one input")
    return {
        name: json_to_array(value, _spec(signature_inputs, name).dtype, name)
        for name, value in inputs.items()
    }


def numpy_to_rest_predictions(outputs: Mapping[str, np.ndarray], row_format: bool) -> object:
    """The value for ``"predictions"`` (row format) or ``"outputs"`` (columnar)."""
    if not outputs:
        raise InvalidArgument("the model returned no outputs")
    values = {name: _output_json(name, np.asarray(array)) for name, array in outputs.items()}
    if not row_format:
        return next(iter(values.values())) if len(values) == 1 else values
    batch = _common_batch_size(outputs)
    if len(values) == 1:
        return next(iter(values.values()))
    return [{name: value[row] for name, value in values.items()} for row in range(batch)]


def rest_predict_response(outputs: Mapping[str, np.ndarray], row_format: bool) -> dict[str, Any]:
    """The whole ``:predict`` response body."""
    key = "predictions" if row_format else "outputs"
    return {key: numpy_to_rest_predictions(outputs, row_format)}


def _output_json(name: str, array: np.ndarray) -> Any:
    return array_to_json(array, name, force_b64=name.endswith("_bytes"))


def _common_batch_size(outputs: Mapping[str, np.ndarray]) -> int:
    sizes: dict[str, int] = {}
    for name, array in outputs.items():
        if np.ndim(array) == 0:
            raise InvalidArgument(
                f"output '{name}' is a scalar; row format needs a batch dimension "
                "(use the columnar 'inputs' request format)"
            )
        sizes[name] = int(np.shape(array)[0])
    if len(set(sizes.values())) > 1:
        raise InvalidArgument(
            f"outputs have different batch sizes {sizes}; use the columnar 'inputs' format"
        )
    return next(iter(sizes.values()))


def _is_named(value: object) -> bool:
    return isinstance(value, dict) and not is_b64(value)


def _single_input(signature_inputs: Mapping[str, _Spec], key: str) -> tuple[str, _Spec]:
    if len(signature_inputs) != 1:
        raise InvalidArgument(
            f"the signature has {len(signature_inputs)} inputs "
            f"({', '.join(sorted(signature_inputs))}); '{key}' must name them in JSON objects"
        )
    return next(iter(signature_inputs.items()))


def _spec(signature_inputs: Mapping[str, _Spec], name: str) -> _Spec:
    try:
        return signature_inputs[name]
    except KeyError:
        known = ", ".join(sorted(signature_inputs)) or "none"
        raise InvalidArgument(f"unknown input '{name}'; the signature's inputs: {known}") from None
