"""tf.Example requests as numpy: JSON and proto parsing, feature → input mapping, outputs."""

from __future__ import annotations

import numpy as np
import pytest

from streamserve.errors import InvalidArgument, Unimplemented
from streamserve.protos.tfs import example_pb2, input_pb2
from streamserve.runtimes.base import CLASSIFY_METHOD, Signature, TensorSpec
from streamserve.server import examples as ex

pytestmark = pytest.mark.timeout(30)

F32, I64, OBJ = np.dtype("float32"), np.dtype("int64"), np.dtype(object)


def signature(**inputs: TensorSpec) -> Signature:
    outputs = {"scores": TensorSpec("scores", F32, (None, 2))}
    return Signature("serving_default", inputs, outputs)


def test_json_examples_with_context_and_b64() -> None:
    body = {
        "context": {"lang": "en", "w": 0.5},
        "examples": [{"x": [1, 2], "img": {"b64": "aGk="}}, {"x": 3.5, "w": 2, "img": "plain"}],
    }
    first, second = ex.examples_from_json(body)
    assert first["x"].dtype == I64 and first["x"].tolist() == [1, 2]
    assert first["img"].tolist() == [b"hi"] and first["lang"].tolist() == [b"en"]
    assert first["w"].dtype == F32 and second["w"].tolist() == [2]  # own feature wins
    assert second["x"].dtype == F32 and second["img"].tolist() == [b"plain"]


@pytest.mark.parametrize(
    ("body", "text"),
    [
        ({}, "examples"),
        ({"examples": [1]}, r"examples\[0\]"),
        ({"examples": [{"x": [1, "a"]}]}, "examples\\[0\\].x"),
        ({"examples": [{"x": {"b64": "%%"}}]}, "invalid base64"),
        ({"examples": [], "context": []}, "context"),
    ],
)
def test_bad_json_examples(body: dict, text: str) -> None:
    with pytest.raises(InvalidArgument, match=text):
        ex.examples_from_json(body)


def test_proto_examples_with_context() -> None:
    request_input = input_pb2.Input()
    with_context = request_input.example_list_with_context
    with_context.context.features.feature["c"].bytes_list.value.append(b"ctx")
    example = with_context.examples.add()
    example.features.feature["x"].float_list.value.extend([1.5, 2.5])
    example.features.feature["n"].int64_list.value.append(7)
    [features] = ex.examples_from_proto(request_input)
    assert features["x"].dtype == F32 and features["x"].tolist() == [1.5, 2.5]
    assert features["n"].tolist() == [7] and features["c"].tolist() == [b"ctx"]
    with pytest.raises(InvalidArgument, match="Input is empty"):
        ex.examples_from_proto(input_pb2.Input())


def test_features_are_reshaped_and_stacked_per_input() -> None:
    sig = signature(x=TensorSpec("x", F32, (None, 2, 2)), k=TensorSpec("k", I64, (None,)))
    examples = [
        {"x": np.arange(4, dtype=I64), "k": np.array([5], I64)},
        {"x": np.ones(4, F32), "k": np.array([6], I64)},
    ]
    inputs = ex.features_to_inputs(sig, examples, CLASSIFY_METHOD)
    assert inputs["x"].shape == (2, 2, 2) and inputs["x"].dtype == F32
    assert inputs["k"].tolist() == [5, 6]


def test_feature_mismatches_name_the_input_and_signature() -> None:
    sig = signature(k=TensorSpec("k", I64, (None,)))
    with pytest.raises(InvalidArgument, match=r"feature 'k'.*expected int64\[\?\]"):
        ex.features_to_inputs(sig, [{"k": np.array([1.5], F32)}], CLASSIFY_METHOD)
    with pytest.raises(InvalidArgument, match="lacks feature"):
        ex.features_to_inputs(sig, [{"q": np.array([1], I64)}], CLASSIFY_METHOD)


def test_serialized_examples_for_tf_classify_signatures() -> None:
    sig = Signature("c", {"inputs": TensorSpec("inputs", OBJ, (None,))}, {}, CLASSIFY_METHOD)
    inputs = ex.serialized_examples_input(sig, [{"x": np.array([1.0], F32)}])
    parsed = example_pb2.Example.FromString(inputs["inputs"][0])
    assert list(parsed.features.feature["x"].float_list.value) == [1.0]


def test_classification_outputs() -> None:
    sig = signature()
    scores = np.array([[0.25, 0.75]], F32)
    classes = np.array([[b"cat", b"dog"]], dtype=object)
    both = ex.outputs_to_classifications(sig, {"scores": scores, "classes": classes}, 1)
    assert both == [[("cat", 0.25), ("dog", 0.75)]]
    indices = ex.outputs_to_classifications(sig, {"logits": scores}, 1)
    assert indices == [[("0", 0.25), ("1", 0.75)]]
    with pytest.raises(Unimplemented, match="Use Predict"):
        ex.outputs_to_classifications(sig, {"a": scores, "b": scores}, 1)
    with pytest.raises(InvalidArgument, match=r"\[2, K\]"):
        ex.outputs_to_classifications(sig, {"scores": scores}, 2)


def test_regression_outputs() -> None:
    sig = signature()
    assert ex.outputs_to_regressions(sig, {"outputs": np.array([[1.5], [2]], F32)}, 2) == [1.5, 2.0]
    assert ex.outputs_to_regressions(sig, {"y": np.array([3], F32)}, 1) == [3.0]
    with pytest.raises(InvalidArgument, match="one value per example"):
        ex.outputs_to_regressions(sig, {"y": np.zeros((1, 2), F32)}, 1)
