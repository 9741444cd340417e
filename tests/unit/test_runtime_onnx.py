"""ONNX runtime + registry: signatures, strict request checks, parity with raw onnxruntime."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from streamserve.errors import Code, FailedPrecondition, InvalidArgument, NotFound, StreamserveError
from streamserve.models.toy import build_multi, build_tiny
from streamserve.runtimes import (
    DEFAULT_SIGNATURE,
    PREDICT_METHOD,
    Servable,
    load_servable,
    registry,
    validation,
)
from streamserve.runtimes import onnx as onnx_runtime
from streamserve.runtimes.base import LoadOptions
from streamserve.runtimes.onnx import OnnxRuntime, _session_run, intra_op_threads

OBJ = np.dtype(object)


@pytest.fixture
def tiny_dir(tmp_path: Path) -> Path:
    build_tiny(tmp_path / "tiny" / "1")
    return tmp_path / "tiny" / "1"


@pytest.fixture
def multi_dir(tmp_path: Path) -> Path:
    build_multi(tmp_path / "multi" / "1")
    return tmp_path / "multi" / "1"


def multi_inputs(n: int = 3) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    return {
        "x": rng.standard_normal((n, 4)).astype(np.float32),
        "ids": rng.integers(-(2**62), 2**62, size=(n, 2), dtype=np.int64),
        "names": np.array([f"név-{i}".encode() for i in range(n)], dtype=object),
    }


def raw_session(version_dir: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(version_dir / "model.onnx"), providers=["CPUExecutionProvider"])


def test_signature_from_graph(multi_dir: Path) -> None:
    servable = load_servable(multi_dir)
    assert isinstance(servable, Servable)
    assert list(servable.signatures) == [DEFAULT_SIGNATURE]
    sig = servable.signatures[DEFAULT_SIGNATURE]
    assert sig.method_name == PREDICT_METHOD
    assert {n: (s.dtype, s.shape) for n, s in sig.inputs.items()} == {
        "x": (np.dtype(np.float32), (None, 4)),
        "ids": (np.dtype(np.int64), (None, 2)),
        "names": (OBJ, (None,)),
    }
    assert list(sig.outputs) == ["y", "ids_out", "names_out"]
    assert sig.outputs["names_out"].dtype == OBJ


def test_tiny_matches_raw_onnxruntime_bit_for_bit(tiny_dir: Path) -> None:
    x = np.random.default_rng(1).standard_normal((5, 64)).astype(np.float32)
    ours = load_servable(tiny_dir).predict({"x": x})
    (expected,) = raw_session(tiny_dir).run(["y"], {"x": x})
    assert ours["y"].dtype == np.float32
    assert np.array_equal(ours["y"], expected)


def test_multi_matches_raw_onnxruntime_for_float_int64_string(multi_dir: Path) -> None:
    inputs = multi_inputs()
    ours = load_servable(multi_dir).predict(inputs)
    raw_feeds = dict(inputs, names=np.array([b.decode() for b in inputs["names"]], dtype=object))
    y, ids_out, names_out = raw_session(multi_dir).run(None, raw_feeds)
    assert np.array_equal(ours["y"], y) and ours["y"].dtype == np.float32
    assert np.array_equal(ours["ids_out"], ids_out) and ours["ids_out"].dtype == np.int64
    assert ours["names_out"].dtype == OBJ
    assert list(ours["names_out"]) == [s.encode() for s in names_out]
    assert all(type(v) is bytes for v in ours["names_out"])


def test_string_inputs_accept_numpy_bytes_and_str_arrays(multi_dir: Path) -> None:
    servable = load_servable(multi_dir)
    inputs = multi_inputs(2)
    for names in (np.array([b"a", b"bc"]), np.array(["a", "bc"])):
        out = servable.predict(dict(inputs, names=names))
        assert list(out["names_out"]) == [b"a", b"bc"]


def test_non_utf8_string_names_the_input(multi_dir: Path) -> None:
    inputs = dict(multi_inputs(2), names=np.array([b"ok", b"\xff\xfe"], dtype=object))
    with pytest.raises(InvalidArgument, match=r"input 'names': element 1 is not valid UTF-8"):
        load_servable(multi_dir).predict(inputs)


def test_non_bytes_string_element_is_refused(multi_dir: Path) -> None:
    inputs = dict(multi_inputs(2), names=np.array([b"ok", 3], dtype=object))
    with pytest.raises(InvalidArgument, match=r"input 'names': element 1 is int, expected bytes"):
        load_servable(multi_dir).predict(inputs)


def test_unknown_signature_uses_tf_serving_message(tiny_dir: Path) -> None:
    with pytest.raises(InvalidArgument) as caught:
        load_servable(tiny_dir).predict({"x": np.zeros((1, 64), np.float32)}, "nope")
    assert caught.value.code == Code.INVALID_ARGUMENT
    assert 'Serving signature name: "nope" not found in signature def' in caught.value.message


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"x": np.zeros((2, 4), np.float64)},
            r"input 'x': expected float32\[\?,4\], got float64\[2,4\]",
        ),
        (
            {"x": np.zeros((2, 5), np.float32)},
            r"input 'x': expected float32\[\?,4\], got float32\[2,5\]",
        ),
        ({"x": np.zeros((2, 4, 1), np.float32)}, r"expected float32\[\?,4\], got float32\[2,4,1\]"),
        (
            {"ids": np.zeros((2, 2), np.int32)},
            r"input 'ids': expected int64\[\?,2\], got int32\[2,2\]",
        ),
        (
            {"names": np.zeros(2, np.float32)},
            r"input 'names': expected string\[\?\], got float32\[2\]",
        ),
        (
            {"extra": np.zeros(1, np.float32)},
            r"unexpected input 'extra' for signature 'serving_default'",
        ),
    ],
)
def test_bad_inputs_name_input_and_expected_spec(
    multi_dir: Path, change: dict[str, np.ndarray], message: str
) -> None:
    with pytest.raises(InvalidArgument, match=message):
        load_servable(multi_dir).predict(dict(multi_inputs(2), **change))


def test_missing_input_lists_expected_inputs(multi_dir: Path) -> None:
    inputs = multi_inputs(2)
    del inputs["ids"]
    with pytest.raises(InvalidArgument) as caught:
        load_servable(multi_dir).predict(inputs)
    assert "missing input 'ids'" in caught.value.message
    assert "x: float32[?,4], ids: int64[?,2], names: string[?]" in caught.value.message


def test_batch_dims_disagreeing_is_an_invalid_argument(multi_dir: Path) -> None:
    inputs = dict(multi_inputs(2), x=np.zeros((3, 4), np.float32))
    with pytest.raises(InvalidArgument, match=r"inputs 'x' and 'ids' disagree on dimension 'N'"):
        load_servable(multi_dir).predict(inputs)


def test_output_filter_selects_outputs(multi_dir: Path) -> None:
    servable = load_servable(multi_dir)
    out = servable.predict(multi_inputs(2), output_filter=["names_out", "y"])
    assert list(out) == ["names_out", "y"]
    with pytest.raises(InvalidArgument, match=r"output 'zz' not found in signature"):
        servable.predict(multi_inputs(2), output_filter=["zz"])


def test_concurrent_predicts_are_consistent(tiny_dir: Path) -> None:
    servable = load_servable(tiny_dir)
    batches = [np.full((2, 64), i, np.float32) for i in range(16)]
    expected = [servable.predict({"x": b})["y"] for b in batches]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda b: servable.predict({"x": b})["y"], batches))
    assert all(np.array_equal(a, b) for a, b in zip(expected, got, strict=True))


def test_non_contiguous_input_is_accepted(tiny_dir: Path) -> None:
    x = np.random.default_rng(2).standard_normal((64, 4)).astype(np.float32).T
    out = load_servable(tiny_dir).predict({"x": x})
    (expected,) = raw_session(tiny_dir).run(["y"], {"x": np.ascontiguousarray(x)})
    assert np.array_equal(out["y"], expected)


def test_closed_servable_refuses(tiny_dir: Path) -> None:
    servable = load_servable(tiny_dir)
    servable.close()
    with pytest.raises(FailedPrecondition, match="closed"):
        servable.predict({"x": np.zeros((1, 64), np.float32)})


def test_corrupt_model_is_data_loss_naming_the_file(tmp_path: Path) -> None:
    (tmp_path / "1").mkdir()
    (tmp_path / "1" / "model.onnx").write_bytes(b"\x00garbage, not a protobuf")
    with pytest.raises(StreamserveError) as caught:
        load_servable(tmp_path / "1")
    assert caught.value.code == Code.DATA_LOSS
    assert str(tmp_path / "1" / "model.onnx") in caught.value.message
    assert "Protobuf parsing failed" in caught.value.message


def test_model_ort_refuses_is_invalid_argument(tmp_path: Path) -> None:
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("NoSuchOp", ["x"], ["y"], domain="no.such.domain")],
        "bad",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("no.such.domain", 1)]
    )
    (tmp_path / "1").mkdir()
    (tmp_path / "1" / "model.onnx").write_bytes(model.SerializeToString())
    with pytest.raises(StreamserveError) as caught:
        load_servable(tmp_path / "1")
    assert caught.value.code == Code.INVALID_ARGUMENT
    assert "cannot load ONNX model" in caught.value.message


def test_thread_setting_from_options_then_env(
    monkeypatch: pytest.MonkeyPatch, tiny_dir: Path
) -> None:
    monkeypatch.delenv("STREAMSERVE_ORT_THREADS", raising=False)
    assert intra_op_threads() == 0
    monkeypatch.setenv("STREAMSERVE_ORT_THREADS", "1")
    assert intra_op_threads() == 1
    assert intra_op_threads(LoadOptions(intra_op_threads=3)) == 3
    assert OnnxRuntime().load(tiny_dir).predict({"x": np.ones((1, 64), np.float32)})["y"].shape == (
        1,
        64,
    )
    monkeypatch.setenv("STREAMSERVE_ORT_THREADS", "many")
    with pytest.raises(FailedPrecondition, match="STREAMSERVE_ORT_THREADS"):
        intra_op_threads()


def test_registry_errors_name_the_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(NotFound, match="does not exist"):
        load_servable(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(NotFound) as caught:
        load_servable(tmp_path / "empty")
    assert str(tmp_path / "empty") in caught.value.message
    assert "model.onnx" in caught.value.message and "saved_model.pb" in caught.value.message
    (tmp_path / "tf").mkdir()
    (tmp_path / "tf" / "saved_model.pb").write_bytes(b"")
    monkeypatch.setattr(registry, "tensorflow_installed", lambda: False)
    with pytest.raises(FailedPrecondition, match=r"install streamserve\[tensorflow\]"):
        load_servable(tmp_path / "tf")
    names = [r.name for r in registry.available_runtimes()]
    assert names == ["python", "onnxruntime", "sklearn"]  # no tensorflow; scikit-learn is here


def test_runtime_can_load(tiny_dir: Path, tmp_path: Path) -> None:
    assert OnnxRuntime().can_load(tiny_dir)
    assert not OnnxRuntime().can_load(tmp_path)


def test_inputs_checked_for_the_signature_are_not_checked_again(
    multi_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    servable = load_servable(multi_dir)
    signature = servable.signatures[DEFAULT_SIGNATURE]
    marked = validation.checked_inputs(signature, multi_inputs())
    checks: list[object] = []
    monkeypatch.setattr(validation, "check_inputs", lambda *args: checks.append(args))
    expected = servable.predict(multi_inputs())
    assert len(checks) == 1
    outputs = servable.predict(marked)
    assert len(checks) == 1  # the mark spared the second check
    for name, array in expected.items():
        assert np.array_equal(outputs[name], array)
    renamed = replace(signature, name="other")  # equal, but not the servable's signature
    servable.predict(validation.CheckedInputs(renamed, multi_inputs()))
    assert len(checks) == 2


def test_cpu_sessions_skip_ort_python_wrapper_others_keep_it(tiny_dir: Path) -> None:
    session = raw_session(tiny_dir)
    assert _session_run(session, ("CPUExecutionProvider",)) == session._sess.run
    gpu = ("CUDAExecutionProvider", "CPUExecutionProvider")
    assert _session_run(session, gpu) == session.run  # keeps ORT's provider fallback


def test_microsecond_models_get_one_intra_op_thread(
    tiny_dir: Path, multi_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(onnx_runtime.THREADS_ENV, raising=False)
    opened: list[int] = []
    open_session = onnx_runtime._open_session

    def recording(path: Path, options: LoadOptions) -> ort.InferenceSession:
        opened.append(options.intra_op_threads)
        return open_session(path, options)

    monkeypatch.setattr(onnx_runtime, "_open_session", recording)
    monkeypatch.setattr(onnx_runtime, "TINY_RUN_SECONDS", 1.0)  # any run counts as tiny
    OnnxRuntime().load(tiny_dir)
    assert opened == [0, 1]
    opened.clear()
    OnnxRuntime(LoadOptions(intra_op_threads=2)).load(tiny_dir)
    assert opened == [2]  # an explicit thread count is kept
    assert not onnx_runtime._runs_in_microseconds(raw_session(multi_dir))  # no made-up strings
    monkeypatch.setattr(onnx_runtime, "TINY_RUN_SECONDS", 0.0)  # no run counts as tiny
    opened.clear()
    OnnxRuntime().load(tiny_dir)
    assert opened == [0]
