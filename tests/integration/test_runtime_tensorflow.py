"""TensorFlow SavedModel runtime against TensorFlow itself (skipped without the extra)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from streamserve.errors import Code, InvalidArgument, StreamserveError
from streamserve.runtimes import (
    CLASSIFY_METHOD,
    DEFAULT_SIGNATURE,
    PREDICT_METHOD,
    Servable,
    load_servable,
)

tf = pytest.importorskip("tensorflow", reason="tensorflow not installed (streamserve[tensorflow])")
pytestmark = pytest.mark.tensorflow

OBJ = np.dtype(object)


class _Model(tf.Module):  # type: ignore[misc]
    def __init__(self) -> None:
        super().__init__()
        weights = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)
        self.w = tf.Variable(weights)

    @tf.function(
        input_signature=[
            tf.TensorSpec([None, 4], tf.float32, name="x"),
            tf.TensorSpec([None], tf.string, name="names"),
            tf.TensorSpec([None, 2], tf.int64, name="ids"),
        ]
    )
    def serve(self, x: Any, names: Any, ids: Any) -> dict[str, Any]:
        return {
            "y": tf.nn.relu(tf.matmul(x, self.w)),
            "greeting": tf.strings.join([b"hi ", names]),
            "ids_out": ids * 3,
        }

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
    def classify(self, inputs: Any) -> dict[str, Any]:
        parsed = tf.io.parse_example(inputs, {"x": tf.io.FixedLenFeature([1], tf.float32)})
        return {"scores": parsed["x"] * 0.5 + 2.0}


def _mark_classify(version_dir: Path, signature: str) -> None:
    """TF 2 always writes method predict; set classify as TF 1 exporters did."""
    from tensorflow.core.protobuf import saved_model_pb2

    path = version_dir / "saved_model.pb"
    saved_model = saved_model_pb2.SavedModel.FromString(path.read_bytes())
    saved_model.meta_graphs[0].signature_def[signature].method_name = CLASSIFY_METHOD
    path.write_bytes(saved_model.SerializeToString())


@pytest.fixture(scope="module")
def saved_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    version_dir = tmp_path_factory.mktemp("tfmodel") / "1"
    model = _Model()
    signatures = {"serving_default": model.serve, "classify_x": model.classify}
    tf.saved_model.save(model, str(version_dir), signatures=signatures)
    _mark_classify(version_dir, "classify_x")
    return version_dir


@pytest.fixture(scope="module")
def servable(saved_model_dir: Path) -> Servable:
    return load_servable(saved_model_dir)


def _inputs(n: int = 3) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    return {
        "x": rng.standard_normal((n, 4)).astype(np.float32),
        "names": np.array([b"ada", b"\xff\xfe raw", b"lovelace"][:n], dtype=object),
        "ids": rng.integers(-1000, 1000, (n, 2), dtype=np.int64),
    }


def _example(value: float) -> bytes:
    feature = tf.train.Feature(float_list=tf.train.FloatList(value=[value]))
    return tf.train.Example(features=tf.train.Features(feature={"x": feature})).SerializeToString()


def test_signatures_mirror_the_saved_model(servable: Servable) -> None:
    assert set(servable.signatures) == {DEFAULT_SIGNATURE, "classify_x"}
    sig = servable.signatures[DEFAULT_SIGNATURE]
    assert sig.method_name == PREDICT_METHOD
    assert {n: (s.dtype, s.shape) for n, s in sig.inputs.items()} == {
        "x": (np.dtype(np.float32), (None, 4)),
        "names": (OBJ, (None,)),
        "ids": (np.dtype(np.int64), (None, 2)),
    }
    assert {n: (s.dtype, s.shape) for n, s in sig.outputs.items()} == {
        "y": (np.dtype(np.float32), (None, 3)),
        "greeting": (OBJ, (None,)),
        "ids_out": (np.dtype(np.int64), (None, 2)),
    }
    classify = servable.signatures["classify_x"]
    assert classify.method_name == CLASSIFY_METHOD
    assert classify.inputs["inputs"].dtype == OBJ


def test_predict_matches_tensorflow_in_process(saved_model_dir: Path, servable: Servable) -> None:
    inputs = _inputs()
    ours = servable.predict(inputs)
    function = tf.saved_model.load(str(saved_model_dir)).signatures["serving_default"]
    expected = function(**{k: tf.constant(v) for k, v in inputs.items()})
    assert set(ours) == set(expected)
    for name, tensor in expected.items():
        assert ours[name].dtype == tensor.numpy().dtype
        assert np.array_equal(ours[name], tensor.numpy()), name
    assert ours["greeting"].tolist() == [b"hi ada", b"hi \xff\xfe raw", b"hi lovelace"]


def test_classify_signature_takes_serialized_examples(servable: Servable) -> None:
    examples = np.array([_example(1.0), _example(4.0)], dtype=object)
    out = servable.predict({"inputs": examples}, "classify_x")
    assert out["scores"].tolist() == [[2.5], [4.0]]
    with pytest.raises(InvalidArgument, match="Could not parse example input"):
        servable.predict({"inputs": np.array([b"not an example"], dtype=object)}, "classify_x")


def test_output_filter_and_strict_checks(servable: Servable) -> None:
    assert list(servable.predict(_inputs(), output_filter=["ids_out"])) == ["ids_out"]
    with pytest.raises(InvalidArgument, match='Serving signature name: "nope" not found'):
        servable.predict(_inputs(), "nope")
    bad = dict(_inputs(), x=np.zeros((3, 4), np.float64))
    with pytest.raises(InvalidArgument, match=r"input 'x': expected float32\[\?,4\], got float64"):
        servable.predict(bad)
    with pytest.raises(InvalidArgument, match="output 'zz' not found"):
        servable.predict(_inputs(), output_filter=["zz"])


def test_corrupt_saved_model_is_data_loss(tmp_path: Path) -> None:
    (tmp_path / "1").mkdir()
    (tmp_path / "1" / "saved_model.pb").write_bytes(b"\x0a\xff\xff garbage")
    with pytest.raises(StreamserveError) as caught:
        load_servable(tmp_path / "1")
    assert caught.value.code == Code.DATA_LOSS
    assert "saved_model.pb" in caught.value.message
