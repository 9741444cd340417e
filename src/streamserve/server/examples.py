"""tf.Example requests (Classify / Regress) as plain numpy, both ways.

A request's examples become ``list[Features]``: per example, feature name → 1-D array
(``float32`` for a float_list, ``int64`` for an int64_list, ``object`` of ``bytes`` for a
bytes_list). Context features are merged into every example (an example's own feature
wins), as TF Serving does for ``ExampleListWithContext``.

Two ways to feed a model:

- a TF-style classify/regress signature (one DT_STRING input) gets the examples
  serialized as ``tf.Example`` protos;
- any other signature (e.g. a plain ONNX graph) gets one tensor per input, stacked from
  the example feature of the same name and reshaped to the input's per-example shape.

Outputs: classification reads ``scores`` (float [N, K] or [N]) and ``classes`` (string
[N, K]); a signature with neither but a single output uses it as the scores, and
labels are then the class indices (``"0"``, ``"1"`` ...). Regression reads ``outputs``
(or the single output), shaped [N] or [N, 1].
"""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from streamserve.errors import InvalidArgument, Unimplemented
from streamserve.runtimes.base import CLASSIFY_METHOD, Signature, Tensors, TensorSpec
from streamserve.runtimes.validation import describe_inputs, format_spec

Features = dict[str, np.ndarray]
_OBJECT = np.dtype(object)


# -- wire → Features -------------------------------------------------------------------------


def examples_from_proto(request_input: Any) -> list[Features]:
    """``tensorflow.serving.Input`` (example_list or example_list_with_context) → features."""
    kind = request_input.WhichOneof("kind")
    if kind == "example_list":
        return [_proto_features(e) for e in request_input.example_list.examples]
    if kind == "example_list_with_context":
        with_context = request_input.example_list_with_context
        context = _proto_features(with_context.context)
        return [{**context, **_proto_features(e)} for e in with_context.examples]
    raise InvalidArgument("Input is empty: set example_list or example_list_with_context")


def _proto_features(example: Any) -> Features:
    features: Features = {}
    for name, feature in example.features.feature.items():
        kind = feature.WhichOneof("kind")
        if kind == "float_list":
            features[name] = np.array(feature.float_list.value, dtype=np.float32)
        elif kind == "int64_list":
            features[name] = np.array(feature.int64_list.value, dtype=np.int64)
        elif kind == "bytes_list":
            features[name] = _bytes_array(list(feature.bytes_list.value))
        else:
            features[name] = np.array([], dtype=np.float32)
    return features


def examples_from_json(body: Mapping[str, Any]) -> list[Features]:
    """TF Serving's REST ``{"examples": [{feature: value}], "context"?: {...}}``."""
    examples = body.get("examples")
    if not isinstance(examples, list):
        raise InvalidArgument('Missing or invalid "examples": expected a list of objects')
    context_json = body.get("context", {})
    if not isinstance(context_json, dict):
        raise InvalidArgument('"context" must be an object of features')
    context = _json_features(context_json, "context")
    result = []
    for index, example in enumerate(examples):
        if not isinstance(example, dict):
            raise InvalidArgument(f"examples[{index}] must be an object of features")
        result.append({**context, **_json_features(example, f"examples[{index}]")})
    return result


def _json_features(obj: Mapping[str, Any], where: str) -> Features:
    return {name: _json_feature(value, f"{where}.{name}") for name, value in obj.items()}


def _json_feature(value: Any, where: str) -> np.ndarray:
    values = value if isinstance(value, list) else [value]
    if not values:
        return np.array([], dtype=np.float32)
    if all(isinstance(v, str | dict) for v in values):
        return _bytes_array([_json_bytes(v, where) for v in values])
    if all(isinstance(v, int) for v in values):  # bools are ints too, as in TF Serving
        return np.array(values, dtype=np.int64)
    if all(isinstance(v, int | float) for v in values):
        return np.array(values, dtype=np.float32)
    raise InvalidArgument(
        f'feature {where}: values must all be numbers or all be strings/{{"b64": ...}}'
    )


def _json_bytes(value: str | dict[str, Any], where: str) -> bytes:
    if isinstance(value, str):
        return value.encode()
    encoded = value.get("b64")
    if len(value) != 1 or not isinstance(encoded, str):
        raise InvalidArgument(f'feature {where}: objects must be {{"b64": "<base64>"}}')
    try:
        return base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidArgument(f"feature {where}: invalid base64: {exc}") from None


def _bytes_array(items: list[bytes]) -> np.ndarray:
    array = np.empty(len(items), dtype=object)
    array[:] = items
    return array


# -- Features → model inputs -----------------------------------------------------------------


def serialized_examples_input(signature: Signature, examples: list[Features]) -> Tensors:
    """For TF-style classify/regress signatures: one DT_STRING input of serialized protos."""
    specs = list(signature.inputs.values())
    if len(specs) != 1 or specs[0].dtype != _OBJECT:
        raise InvalidArgument(
            f"signature '{signature.name}' ({signature.method_name}) must have exactly one "
            f"string input for serialized tf.Example; it has: {describe_inputs(signature)}"
        )
    return {specs[0].name: _bytes_array([serialize_example(e) for e in examples])}


def serialize_example(features: Features) -> bytes:
    from streamserve.protos.tfs import example_pb2

    example = example_pb2.Example()
    for name, values in features.items():
        feature = example.features.feature[name]
        if values.dtype == _OBJECT:
            feature.bytes_list.value.extend(values.tolist())
        elif values.dtype.kind in "iub":
            feature.int64_list.value.extend(values.astype(np.int64).tolist())
        else:
            feature.float_list.value.extend(values.astype(np.float32).tolist())
    return bytes(example.SerializeToString())


def features_to_inputs(signature: Signature, examples: list[Features], method: str) -> Tensors:
    """Map features to the inputs of the same name, stacking the examples along dim 0."""
    _check_features_present(signature, examples, method)
    inputs: Tensors = {}
    for name, spec in signature.inputs.items():
        rows = [_example_value(signature, spec, e, i) for i, e in enumerate(examples)]
        if len({row.shape for row in rows}) > 1:
            raise InvalidArgument(
                f"feature '{name}' has different lengths across examples; input '{name}' "
                f"needs equal shapes (signature '{signature.name}': {describe_inputs(signature)})"
            )
        inputs[name] = np.stack(rows)
    return inputs


def _check_features_present(signature: Signature, examples: list[Features], method: str) -> None:
    for index, example in enumerate(examples):
        missing = [name for name in signature.inputs if name not in example]
        if missing:
            verb = "Classify" if method == CLASSIFY_METHOD else "Regress"
            raise InvalidArgument(
                f"{verb} on signature '{signature.name}' maps example features to inputs by "
                f"name; example {index} lacks feature(s) {', '.join(missing)}; expected "
                f"inputs: {describe_inputs(signature)}"
            )


def _example_value(
    signature: Signature, spec: TensorSpec, example: Features, index: int
) -> np.ndarray:
    values = example[spec.name]
    values = _cast_feature(signature, spec, values, index)
    if spec.shape is None:
        return values
    row_shape = spec.shape[1:]
    known = [dim for dim in row_shape if dim is not None]
    if len(known) == len(row_shape):
        if values.size != math.prod(known):
            raise InvalidArgument(_feature_error(signature, spec, values, index))
        return values.reshape(known)
    if len(row_shape) == 1:
        return values
    raise InvalidArgument(
        f"input '{spec.name}' of signature '{signature.name}' has shape {format_spec(spec)}; "
        "a flat example feature cannot fill more than one unknown dimension"
    )


def _cast_feature(
    signature: Signature, spec: TensorSpec, values: np.ndarray, index: int
) -> np.ndarray:
    if spec.dtype == _OBJECT:
        if values.dtype != _OBJECT and values.size:
            raise InvalidArgument(_feature_error(signature, spec, values, index))
        return values.astype(object)
    if values.dtype == _OBJECT and values.size:
        raise InvalidArgument(_feature_error(signature, spec, values, index))
    if values.dtype.kind == "f" and spec.dtype.kind in "iub":
        raise InvalidArgument(_feature_error(signature, spec, values, index))
    return values.astype(spec.dtype)


def _feature_error(signature: Signature, spec: TensorSpec, values: np.ndarray, index: int) -> str:
    kind = {"O": "bytes_list"}.get(values.dtype.kind, "float_list")
    if values.dtype.kind in "iub":
        kind = "int64_list"
    return (
        f"example {index} feature '{spec.name}' ({kind} of {values.size} values) does not fit "
        f"input '{spec.name}': expected {format_spec(spec)} (signature '{signature.name}'; "
        f"inputs: {describe_inputs(signature)})"
    )


# -- model outputs → results -----------------------------------------------------------------


def outputs_to_classifications(
    signature: Signature, outputs: Tensors, count: int
) -> list[list[tuple[str, float]]]:
    scores, classes = outputs.get("scores"), outputs.get("classes")
    if scores is None and classes is None:
        scores = _single_output(signature, outputs, "classify", "scores/classes")
    if scores is not None:
        scores = _rows(np.asarray(scores, dtype=np.float32), count, "scores")
    if classes is not None:
        classes = _rows(np.asarray(classes), count, "classes")
    width = (scores if scores is not None else classes).shape[1]  # type: ignore[union-attr]
    return [
        [(_label(classes, row, col), _score(scores, row, col)) for col in range(width)]
        for row in range(count)
    ]


def outputs_to_regressions(signature: Signature, outputs: Tensors, count: int) -> list[float]:
    values = outputs.get("outputs")
    if values is None:
        values = _single_output(signature, outputs, "regress", "outputs")
    rows = _rows(np.asarray(values, dtype=np.float32), count, "outputs")
    if rows.shape[1] != 1:
        raise InvalidArgument(
            f"regress expects one value per example; signature '{signature.name}' returned "
            f"shape {list(np.shape(values))}"
        )
    return [float(v) for v in rows[:, 0]]


def _single_output(signature: Signature, outputs: Tensors, verb: str, wanted: str) -> np.ndarray:
    if len(outputs) != 1:
        raise Unimplemented(
            f"{verb.capitalize()} needs outputs named {wanted} or a single output; signature "
            f"'{signature.name}' has outputs {', '.join(outputs)}. Use Predict instead."
        )
    return next(iter(outputs.values()))


def _rows(array: np.ndarray, count: int, name: str) -> np.ndarray:
    if array.ndim == 1:
        array = array.reshape(-1, 1)
    if array.ndim != 2 or array.shape[0] != count:
        raise InvalidArgument(
            f"output '{name}' must be shaped [{count}, K] for {count} examples, "
            f"got {list(array.shape)}"
        )
    return array


def _label(classes: np.ndarray | None, row: int, col: int) -> str:
    if classes is None:
        return str(col)
    value = classes[row, col]
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _score(scores: np.ndarray | None, row: int, col: int) -> float:
    return 0.0 if scores is None else float(scores[row, col])


def labelled(pairs: Sequence[tuple[str, float]]) -> list[list[Any]]:
    """REST form of one example's classes: ``[[label, score], ...]``."""
    return [[label, score] for label, score in pairs]
