"""InferenceCore over a real ModelManager and real ONNX Runtime servables (no processes)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from streamserve.errors import InvalidArgument, NotFound, Unimplemented
from streamserve.models.toy import build_multi, build_tiny
from streamserve.repository import ModelConfig, ModelManager, VersionState
from streamserve.server.core import InferenceCore, ModelRef, ThreadPoolRunner

pytestmark = pytest.mark.timeout(60)


def build_sum(version_dir: Path) -> Path:
    """``x`` float32 [N, 3] → ``total`` float32 [N, 1] (for Regress)."""
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("ReduceSum", ["x", "axes"], ["total"], keepdims=1)],
        "sum",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
        [helper.make_tensor_value_info("total", TensorProto.FLOAT, ["N", 1])],
        initializer=[numpy_helper.from_array(np.array([1], dtype=np.int64), "axes")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    version_dir.mkdir(parents=True)
    (version_dir / "model.onnx").write_bytes(model.SerializeToString())
    return version_dir / "model.onnx"


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    build_multi(root / "multi" / "1")
    build_tiny(root / "tiny" / "1", width=8)
    build_sum(root / "sum" / "1")
    return root


@pytest.fixture(scope="module")
def manager(repo: Path) -> Iterator[ModelManager]:
    configs = [ModelConfig(name, repo / name) for name in ("multi", "tiny", "sum")]
    manager = ModelManager(configs, file_system_poll_wait_seconds=0)
    manager.start()
    yield manager
    manager.stop()


@pytest.fixture
def core(manager: ModelManager) -> Iterator[InferenceCore]:
    core = InferenceCore(manager, ThreadPoolRunner(2))
    yield core
    core.close()


def multi_inputs(rows: int = 2) -> dict[str, np.ndarray]:
    names = np.empty(rows, dtype=object)
    names[:] = [f"n{i}".encode() for i in range(rows)]
    return {
        "x": np.arange(rows * 4, dtype=np.float32).reshape(rows, 4) / 3,
        "ids": np.arange(rows * 2, dtype=np.int64).reshape(rows, 2),
        "names": names,
    }


def test_predict_matches_onnxruntime(core: InferenceCore, repo: Path) -> None:
    inputs = multi_inputs()
    result = asyncio.run(core.predict(ModelRef("multi"), inputs))
    assert (result.model_name, result.version, result.signature_name) == (
        "multi",
        1,
        "serving_default",
    )
    session = ort.InferenceSession(str(repo / "multi" / "1" / "model.onnx"))
    feed = {**inputs, "names": inputs["names"].astype(str)}
    y, ids_out, _ = session.run(["y", "ids_out", "names_out"], feed)
    assert result.outputs["y"].tobytes() == y.tobytes()
    assert result.outputs["ids_out"].tobytes() == ids_out.tobytes()
    assert list(result.outputs["names_out"]) == list(inputs["names"])


def test_decoder_gets_the_signature_and_output_filter_applies(core: InferenceCore) -> None:
    seen: list[str] = []

    def decode(signature: object) -> dict[str, np.ndarray]:
        seen.append(signature.name)  # type: ignore[attr-defined]
        return multi_inputs(1)

    result = asyncio.run(core.predict(ModelRef("multi", version=1), decode, "", ["y"]))
    assert seen == ["serving_default"]
    assert list(result.outputs) == ["y"]


@pytest.mark.parametrize(
    ("ref", "error", "text"),
    [
        (ModelRef("nope"), NotFound, "nope"),
        (ModelRef("multi", version=9), NotFound, "9"),
    ],
)
def test_unknown_model_or_version(
    core: InferenceCore, ref: ModelRef, error: type[Exception], text: str
) -> None:
    with pytest.raises(error, match=text):
        asyncio.run(core.predict(ref, multi_inputs()))


def test_bad_inputs_name_the_input_and_signature(core: InferenceCore) -> None:
    wrong_dtype = {**multi_inputs(), "x": np.zeros((2, 4), dtype=np.float64)}
    with pytest.raises(InvalidArgument, match=r"input 'x'.*float32\[\?,4\].*serving_default"):
        asyncio.run(core.predict(ModelRef("multi"), wrong_dtype))
    wrong_name = {**multi_inputs(), "extra": np.zeros(2, dtype=np.float32)}
    with pytest.raises(InvalidArgument, match=r"'extra'.*expected inputs: x: float32"):
        asyncio.run(core.predict(ModelRef("multi"), wrong_name))
    with pytest.raises(InvalidArgument, match="serving_defaultx"):
        asyncio.run(core.predict(ModelRef("multi"), multi_inputs(), "serving_defaultx"))
    with pytest.raises(InvalidArgument, match="'zzz'"):
        asyncio.run(core.predict(ModelRef("multi"), multi_inputs(), "", ["zzz"]))


class GateRunner:
    """Blocks every call until released, to observe handles during a call."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.gate = asyncio.Event()
        self.handles: list[object] = []

    async def run(
        self, handle: object, signature_name: str, inputs: dict, output_filter: Sequence[str]
    ) -> dict:
        self.handles.append(handle)
        self.entered.set()
        await self.gate.wait()
        return {"y": inputs["x"]}

    def close(self) -> None:
        pass


def test_cancelled_request_keeps_its_handle_until_the_call_ends(manager: ModelManager) -> None:
    runner = GateRunner()
    core = InferenceCore(manager, runner)

    async def scenario() -> None:
        request = asyncio.create_task(core.predict(ModelRef("multi"), multi_inputs()))
        await runner.entered.wait()
        request.cancel()
        with pytest.raises(asyncio.CancelledError):
            await request
        handle = runner.handles[0]
        assert handle._release is not None  # type: ignore[attr-defined]  # still held
        runner.gate.set()
        await core.drain(timeout=5)
        assert handle._release is None  # type: ignore[attr-defined]  # released after the call

    asyncio.run(scenario())


def test_classify_maps_features_to_inputs_by_name(core: InferenceCore) -> None:
    examples = [{"x": np.linspace(-1, 1, 8, dtype=np.float32)} for _ in range(3)]
    result = asyncio.run(core.classify(ModelRef("tiny"), examples))
    assert len(result.classifications) == 3
    labels = [label for label, _ in result.classifications[0]]
    assert labels == [str(i) for i in range(8)]  # no "classes" output: class indices


def test_regress_uses_the_single_output(core: InferenceCore) -> None:
    examples = [{"x": np.array([1, 2, 3], dtype=np.int64)}, {"x": np.array([0.5, 0, 0], "f4")}]
    result = asyncio.run(core.regress(ModelRef("sum"), examples))
    assert result.values == [6.0, 0.5]


def test_classify_errors_are_clear(core: InferenceCore) -> None:
    with pytest.raises(InvalidArgument, match="lacks feature"):
        asyncio.run(core.classify(ModelRef("tiny"), [{"other": np.zeros(8, "f4")}]))
    with pytest.raises(InvalidArgument, match="does not fit input 'x'"):
        asyncio.run(core.classify(ModelRef("tiny"), [{"x": np.zeros(7, "f4")}]))
    with pytest.raises(Unimplemented, match="Use Predict"):
        asyncio.run(core.regress(ModelRef("multi"), [multi_example()]))


def multi_example() -> dict[str, np.ndarray]:
    names = np.empty(1, dtype=object)
    names[0] = b"a"
    return {"x": np.zeros(4, "f4"), "ids": np.zeros(2, "i8"), "names": names}


def test_metadata_and_status(core: InferenceCore) -> None:
    metadata = core.metadata(ModelRef("multi"))
    assert (metadata.name, metadata.version) == ("multi", 1)
    assert set(metadata.signatures["serving_default"].inputs) == {"x", "ids", "names"}
    [status] = core.status(ModelRef("multi"))
    assert (status.version, status.state) == (1, VersionState.AVAILABLE)


def test_request_observers(core: InferenceCore) -> None:
    seen: list[tuple] = []
    core.add_request_observer(lambda *args: seen.append(args))
    core.observe_request("m", "1", "tfserving", "predict", "OK", 0.0)
    assert seen and seen[0][:5] == ("m", "1", "tfserving", "predict", "OK")


class _ThreadRecordingServable:
    """Records the thread each predict ran on; ``seconds`` fakes how long it takes."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.threads: list[str] = []

    def predict(
        self, inputs: dict[str, np.ndarray], signature_name: str, output_filter: object
    ) -> dict[str, np.ndarray]:
        import threading
        import time

        self.threads.append(threading.current_thread().name)
        time.sleep(self.seconds)
        return {"y": inputs["x"]}


class _Handle:
    def __init__(self, servable: object) -> None:
        self.servable = servable


@pytest.mark.parametrize(
    ("seconds", "size", "expect_inline"),
    [(0.0, 4, True), (0.005, 4, False), (0.0, 64 * 1024, False)],
)
def test_runner_runs_proven_fast_small_calls_inline(
    seconds: float, size: int, expect_inline: bool
) -> None:
    servable = _ThreadRecordingServable(seconds)
    runner = ThreadPoolRunner(threads=1)
    inputs = {"x": np.zeros(size, np.float32)}

    async def three_calls() -> None:
        for _ in range(3):
            await runner.run(_Handle(servable), "serving_default", inputs, ())  # type: ignore[arg-type]

    try:
        asyncio.run(three_calls())
    finally:
        runner.close()
    assert servable.threads[0].startswith("predict")  # unknown cost: a worker thread first
    assert all(name.startswith("predict") != expect_inline for name in servable.threads[1:])
