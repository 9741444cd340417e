"""``streamserve serve`` as a TensorFlow Serving drop-in, checked with clients we did not write.

Issue 4's acceptance points, against real server processes (see conftest.py):
1. the CLI serves gRPC and REST, and the server never imports TensorFlow;
2. ``tensorflow-serving-api`` stubs and curl calls from TF Serving's REST docs work;
3. new versions, labels and label switches under ≥ 8 concurrent closed-loop clients, 0 failures;
4. a corrupt version leaves the previous one serving; a model removed from the config
   file is unloaded;
5. bad requests get clear NOT_FOUND / INVALID_ARGUMENT / RESOURCE_EXHAUSTED answers
   (404 / 400 / 413 on REST) without disturbing concurrent requests;
6. outputs equal in-process onnxruntime bit for bit (gRPC tensor_content and *_val forms,
   REST).
"""

from __future__ import annotations

import base64
import importlib.metadata
import json
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import httpx
import numpy as np
import onnxruntime as ort
import pytest

from streamserve.models.toy import build_multi, build_tiny
from streamserve.server.cli import SERVER_READY_PREFIX
from streamserve.waiting import wait_until

if TYPE_CHECKING:
    from .conftest import ServerProcess

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

# The official TF Serving client (it drags TensorFlow in; dev extra only).
tfs_predict = pytest.importorskip("tensorflow_serving.apis.predict_pb2")
from tensorflow.core.framework import tensor_pb2, types_pb2  # noqa: E402
from tensorflow_serving.apis import (  # noqa: E402
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)

DEADLINE_SECONDS = 60.0
LOAD_CLIENTS = 8


# -- models and servers ----------------------------------------------------------------------


def build_sum(version_dir: Path) -> None:
    """``x`` float32 [N, 3] → ``total`` float32 [N, 1] (a regression-shaped output)."""
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


def publish_version(base_path: Path, version: int, build: Callable[[Path], object]) -> None:
    """Build a version next to the base path, then rename it in (atomic, as in production)."""
    staging = base_path.parent / f".staging-{base_path.name}-{version}"
    build(staging)
    staging.rename(base_path / str(version))


def config_text(*models: str) -> str:
    return "model_config_list {\n" + "\n".join(models) + "\n}\n"


def model_entry(name: str, base_path: Path, extra: str = "") -> str:
    return f'  config {{ name: "{name}" base_path: "{base_path}" model_platform: "onnx" {extra} }}'


LABELLED = (
    "model_version_policy { specific { versions: 1 versions: 2 } } "
    'version_labels { key: "stable" value: 1 } version_labels { key: "canary" value: 2 }'
)


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("zoo")
    build_multi(root / "m" / "1")
    build_multi(root / "m" / "2")
    build_tiny(root / "tiny" / "1", width=8)
    build_sum(root / "sum" / "1")
    config = config_text(
        model_entry("m", root / "m", LABELLED),
        model_entry("tiny", root / "tiny"),
        model_entry("sum", root / "sum"),
    )
    (root / "models.config").write_text(config)
    return root


@pytest.fixture(scope="module")
def zoo_server(zoo: Path, serve_process_module: Callable[..., ServerProcess]) -> ServerProcess:
    """m (versions 1 and 2, labels stable/canary), tiny (classify), sum (regress); 1 MiB limits."""
    server = serve_process_module(
        f"--model_config_file={zoo / 'models.config'}",
        "--grpc_max_message_bytes=1048576",
        "--rest-api-max-body-bytes=1048576",
    )
    return server.wait_ready(model="m")


# -- TF Serving client helpers ---------------------------------------------------------------


def stubs(server: ServerProcess) -> tuple[grpc.Channel, object, object]:
    options = [("grpc.max_send_message_length", 64 << 20)]
    channel = grpc.insecure_channel(server.grpc_target, options=options)
    return (
        channel,
        prediction_service_pb2_grpc.PredictionServiceStub(channel),
        model_service_pb2_grpc.ModelServiceStub(channel),
    )


def content_proto(array: np.ndarray) -> tensor_pb2.TensorProto:
    """Numeric tensor in the ``tensor_content`` form."""
    proto = tensor_pb2.TensorProto(dtype=_TF_DTYPES[array.dtype.name])
    for size in array.shape:
        proto.tensor_shape.dim.add(size=size)
    proto.tensor_content = np.ascontiguousarray(array).tobytes()
    return proto


def val_proto(array: np.ndarray) -> tensor_pb2.TensorProto:
    """Tensor in the typed ``*_val`` form (``string_val`` for strings)."""
    if array.dtype == object:
        proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING)
        proto.string_val.extend(array.ravel().tolist())
    else:
        proto = tensor_pb2.TensorProto(dtype=_TF_DTYPES[array.dtype.name])
        field = {"float32": "float_val", "int64": "int64_val", "float64": "double_val"}
        getattr(proto, field[array.dtype.name]).extend(array.ravel().tolist())
    for size in array.shape:
        proto.tensor_shape.dim.add(size=size)
    return proto


_TF_DTYPES = {
    "float32": types_pb2.DT_FLOAT,
    "int64": types_pb2.DT_INT64,
    "float64": types_pb2.DT_DOUBLE,
}


def to_numpy(proto: tensor_pb2.TensorProto) -> np.ndarray:
    import tensorflow as tf

    return tf.make_ndarray(proto)


def strings(*items: bytes) -> np.ndarray:
    array = np.empty(len(items), dtype=object)
    array[:] = list(items)
    return array


def multi_inputs(rows: int = 2, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "x": rng.standard_normal((rows, 4)).astype(np.float32),
        "ids": rng.integers(-(2**40), 2**40, (rows, 2), dtype=np.int64),
        "names": strings(*[f"n{i}-é✓".encode() for i in range(rows)]),
    }


def predict_request(
    model: str,
    inputs: dict[str, np.ndarray],
    encode: Callable[[np.ndarray], tensor_pb2.TensorProto] = content_proto,
    version: int | None = None,
    label: str | None = None,
) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    if version is not None:
        request.model_spec.version.value = version
    if label is not None:
        request.model_spec.version_label = label
    for name, array in inputs.items():
        request.inputs[name].CopyFrom(val_proto(array) if array.dtype == object else encode(array))
    return request


class ClosedLoopClients:
    """N threads each sending one Predict after another; records versions and failures."""

    def __init__(self, server: ServerProcess, make_request: Callable[[], object]) -> None:
        self.channel, self.stub, _ = stubs(server)
        self.make_request = make_request
        self.versions: Counter[int] = Counter()
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._loop, daemon=True) for _ in range(LOAD_CLIENTS)
        ]

    def __enter__(self) -> ClosedLoopClients:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)
        self.channel.close()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                response = self.stub.Predict(self.make_request(), timeout=30)
                with self._lock:
                    self.versions[response.model_spec.version.value] += 1
            except grpc.RpcError as exc:
                with self._lock:
                    self.failures.append(f"{exc.code()}: {exc.details()}")
            except Exception as exc:  # a client bug must fail the test, not hang it
                with self._lock:
                    self.failures.append(repr(exc))
                return

    def count(self, version: int) -> int:
        with self._lock:
            return self.versions[version]


def version_states(model_stub: object, model: str) -> dict[int, tuple[str, int, str]]:
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = model
    response = model_stub.GetModelStatus(request, timeout=10)  # type: ignore[attr-defined]
    names = get_model_status_pb2.ModelVersionStatus.State.Name
    return {
        s.version: (names(s.state), s.status.error_code, s.status.error_message)
        for s in response.model_version_status
    }


def curl(*args: str) -> tuple[int, object]:
    """Run real curl; return (HTTP status, parsed JSON body)."""
    result = subprocess.run(
        ["curl", "-sS", "-w", "\n%{http_code}", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    body, _, status = result.stdout.rpartition("\n")
    return int(status), json.loads(body)


# -- 1. the CLI serves both protocols without TensorFlow --------------------------------------


def test_core_install_does_not_require_tensorflow() -> None:
    requirements = importlib.metadata.requires("streamserve") or []
    core = [r for r in requirements if "extra ==" not in r]
    assert core, "streamserve declares core dependencies"
    assert not [r for r in core if r.lower().startswith("tensorflow")]


def test_cli_serves_grpc_and_rest(tfserving_server: ServerProcess) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    assert [tfserving_server.ready_line] == [
        f"{SERVER_READY_PREFIX}127.0.0.1:{tfserving_server.grpc_port}, "
        f"REST on 127.0.0.1:{tfserving_server.rest_port}"
    ]
    with grpc.insecure_channel(tfserving_server.grpc_target) as channel:
        check = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=10
        )
    assert check.status == health_pb2.HealthCheckResponse.SERVING
    status = httpx.get(f"{tfserving_server.rest_url}/v1/models/m", timeout=10)
    assert status.status_code == 200
    assert "must not import tensorflow" not in tfserving_server.stderr()


# -- 2. interop: tensorflow-serving-api and curl ----------------------------------------------


def test_tensorflow_serving_api_predict_metadata_status(tfserving_server: ServerProcess) -> None:
    import tensorflow as tf

    channel, stub, model_stub = stubs(tfserving_server)
    with channel:
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "m"
        request.model_spec.signature_name = "serving_default"
        request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.ones((2, 4), np.float32)))
        request.inputs["ids"].CopyFrom(tf.make_tensor_proto(np.array([[1, 2], [3, 4]], np.int64)))
        request.inputs["names"].CopyFrom(tf.make_tensor_proto([b"a", b"b"]))
        response = stub.Predict(request, timeout=10)
        assert response.model_spec.name == "m" and response.model_spec.version.value == 1
        assert response.model_spec.signature_name == "serving_default"
        np.testing.assert_array_equal(tf.make_ndarray(response.outputs["y"]), np.full((2, 4), 2))
        np.testing.assert_array_equal(
            tf.make_ndarray(response.outputs["ids_out"]), [[2, 3], [4, 5]]
        )
        assert list(tf.make_ndarray(response.outputs["names_out"])) == [b"a", b"b"]

        filtered = predict_pb2.PredictRequest()
        filtered.CopyFrom(request)
        filtered.output_filter.append("y")
        assert list(stub.Predict(filtered, timeout=10).outputs) == ["y"]

        metadata_request = get_model_metadata_pb2.GetModelMetadataRequest()
        metadata_request.model_spec.name = "m"
        metadata_request.metadata_field.append("signature_def")
        metadata = stub.GetModelMetadata(metadata_request, timeout=10)
        assert metadata.model_spec.version.value == 1
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        assert metadata.metadata["signature_def"].Unpack(signature_map)
        signature = signature_map.signature_def["serving_default"]
        assert signature.method_name == "tensorflow/serving/predict"
        assert signature.inputs["x"].dtype == types_pb2.DT_FLOAT
        assert [d.size for d in signature.inputs["x"].tensor_shape.dim] == [-1, 4]
        assert signature.inputs["names"].dtype == types_pb2.DT_STRING
        assert signature.outputs["ids_out"].dtype == types_pb2.DT_INT64

        assert version_states(model_stub, "m") == {1: ("AVAILABLE", 0, "")}


def test_curl_calls_from_tfserving_rest_docs(tfserving_server: ServerProcess) -> None:
    url = f"{tfserving_server.rest_url}/v1/models/m"
    status, body = curl(url)
    assert (status, body) == (
        200,
        {
            "model_version_status": [
                {
                    "version": "1",
                    "state": "AVAILABLE",
                    "status": {"error_code": "OK", "error_message": ""},
                }
            ]
        },
    )
    assert curl(f"{url}/versions/1")[1] == body
    status, metadata = curl(f"{url}/metadata")
    assert status == 200 and metadata["model_spec"] == {
        "name": "m",
        "signature_name": "",
        "version": "1",
    }
    signature = metadata["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert signature["inputs"]["x"]["dtype"] == "DT_FLOAT"
    assert signature["inputs"]["x"]["tensor_shape"]["dim"][0]["size"] == "-1"

    row = '{"instances": [{"x": [1.0, 2.0, 3.0, 4.0], "ids": [1, 2], "names": "a"}]}'
    status, body = curl("-d", row, "-X", "POST", f"{url}:predict")
    assert (status, body) == (
        200,
        {"predictions": [{"y": [2.0, 4.0, 6.0, 8.0], "ids_out": [2, 3], "names_out": "a"}]},
    )
    columnar = (
        '{"signature_name": "serving_default", "inputs": {"x": [[1, 2, 3, 4]], "ids": [[5, 6]],'
        ' "names": [{"b64": "' + base64.b64encode(b"bin").decode() + '"}]}}'
    )
    status, body = curl("-d", columnar, "-X", "POST", f"{url}/versions/1:predict")
    assert (status, body) == (
        200,
        {"outputs": {"y": [[2.0, 4.0, 6.0, 8.0]], "ids_out": [[6, 7]], "names_out": ["bin"]}},
    )


def test_classify_and_regress_over_grpc_and_curl(zoo_server: ServerProcess) -> None:
    channel, stub, _ = stubs(zoo_server)
    with channel:
        request = classification_pb2.ClassificationRequest()
        request.model_spec.name = "tiny"
        example = request.input.example_list.examples.add()
        example.features.feature["x"].float_list.value.extend(np.linspace(-1, 1, 8).tolist())
        result = stub.Classify(request, timeout=10)
        assert result.model_spec.name == "tiny" and result.model_spec.version.value == 1
        assert [c.label for c in result.result.classifications[0].classes] == [
            str(i) for i in range(8)
        ]

        regress = regression_pb2.RegressionRequest()
        regress.model_spec.name = "sum"
        context = regress.input.example_list_with_context.context
        context.features.feature["x"].float_list.value.extend([9, 9, 9])
        for values in ([1, 2, 3], [0.5, 0.25, 0]):
            item = regress.input.example_list_with_context.examples.add()
            item.features.feature["x"].float_list.value.extend(values)
        assert [r.value for r in stub.Regress(regress, timeout=10).result.regressions] == [
            6.0,
            0.75,
        ]

        multi = inference_pb2.MultiInferenceRequest()
        with pytest.raises(grpc.RpcError) as error:
            stub.MultiInference(multi, timeout=10)
        assert error.value.code() == grpc.StatusCode.UNIMPLEMENTED

    url = zoo_server.rest_url
    status, body = curl(
        "-d",
        '{"examples": [{"x": [1, 2, 3]}, {"x": [1.5, 0, 0]}]}',
        "-X",
        "POST",
        f"{url}/v1/models/sum:regress",
    )
    assert (status, body) == (200, {"result": [6.0, 1.5]})
    examples = json.dumps({"examples": [{"x": [0.1] * 8}]})
    status, body = curl("-d", examples, "-X", "POST", f"{url}/v1/models/tiny:classify")
    assert status == 200 and [label for label, _ in body["result"][0]] == [str(i) for i in range(8)]
    status, body = curl(
        "-d",
        '{"examples": [{"x": [1, 2, 3, 4], "ids": [1, 2], "names": "a"}]}',
        "-X",
        "POST",
        f"{url}/v1/models/m:regress",
    )
    assert status == 501 and "Use Predict" in body["error"]


# -- 3. versions, labels, zero-failure switches ---------------------------------------------


@pytest.mark.parametrize("batching", [False, True], ids=["unbatched", "batched"])
def test_new_version_replaces_old_under_load(
    serve_process: Callable[..., ServerProcess], tmp_path: Path, batching: bool
) -> None:
    base = tmp_path / "m"
    build_multi(base / "1")
    server = serve_process(
        "--model_name=m",
        f"--model_base_path={base}",
        "--file_system_poll_wait_seconds=0.5",
        f"--enable_batching={str(batching).lower()}",
    )
    server.wait_ready(model="m")
    channel, _, model_stub = stubs(server)
    inputs = multi_inputs(4)
    with channel, ClosedLoopClients(server, lambda: predict_request("m", inputs)) as clients:
        wait_until(lambda: clients.count(1) >= 20, DEADLINE_SECONDS, "expected state")
        published = time.monotonic()
        publish_version(base, 2, build_multi)
        wait_until(
            lambda: version_states(model_stub, "m").get(2, ("",))[0] == "AVAILABLE",
            DEADLINE_SECONDS,
            "expected state",
        )
        available_after = time.monotonic() - published
        wait_until(
            lambda: version_states(model_stub, "m").get(1, ("",))[0] == "END",
            DEADLINE_SECONDS,
            "expected state",
        )
        wait_until(lambda: clients.count(2) >= 20, DEADLINE_SECONDS, "expected state")
    answers = dict(clients.versions)
    print(f"\nversion 2 AVAILABLE {available_after:.2f} s after publishing; answers {answers}")
    assert clients.failures == []
    assert clients.count(1) > 0 and clients.count(2) > 0


def test_specific_versions_and_labels(zoo_server: ServerProcess) -> None:
    channel, stub, model_stub = stubs(zoo_server)
    inputs = multi_inputs(1)
    with channel:
        assert version_states(model_stub, "m") == {2: ("AVAILABLE", 0, ""), 1: ("AVAILABLE", 0, "")}
        for kwargs, expected in (
            ({"version": 1}, 1),
            ({"version": 2}, 2),
            ({"label": "stable"}, 1),
            ({"label": "canary"}, 2),
            ({}, 2),
        ):
            response = stub.Predict(predict_request("m", inputs, **kwargs), timeout=10)
            assert response.model_spec.version.value == expected, kwargs
    row = {"instances": [{"x": [1, 2, 3, 4], "ids": [1, 2], "names": "a"}]}
    for path, expected in (
        ("/versions/1", "1"),
        ("/versions/2", "2"),
        ("/labels/stable", "1"),
        ("/labels/canary", "2"),
    ):
        response = httpx.post(
            f"{zoo_server.rest_url}/v1/models/m{path}:predict", json=row, timeout=10
        )
        assert response.status_code == 200 and response.headers["x-model-version"] == expected
        status = httpx.get(f"{zoo_server.rest_url}/v1/models/m{path}", timeout=10).json()
        assert status["model_version_status"][0]["version"] == expected


def test_label_switch_by_reload_config_under_load(
    serve_process: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    base = tmp_path / "m"
    build_multi(base / "1")
    build_multi(base / "2")
    config_file = tmp_path / "models.config"
    config_file.write_text(config_text(model_entry("m", base, LABELLED)))
    server = serve_process(f"--model_config_file={config_file}", "--model_control_mode=explicit")
    server.wait_ready(model="m")
    inputs = multi_inputs(2)
    channel, _, model_stub = stubs(server)
    with (
        channel,
        ClosedLoopClients(server, lambda: predict_request("m", inputs, label="stable")) as clients,
    ):
        wait_until(lambda: clients.count(1) >= 20, DEADLINE_SECONDS, "expected state")
        reload = model_management_pb2.ReloadConfigRequest()
        config = reload.config.model_config_list.config.add(
            name="m", base_path=str(base), model_platform="onnx"
        )
        config.model_version_policy.specific.versions.extend([1, 2])
        config.version_labels["stable"] = 2
        config.version_labels["canary"] = 2
        response = model_stub.HandleReloadConfigRequest(reload, timeout=30)
        assert response.status.error_code == 0
        wait_until(lambda: clients.count(2) >= 20, DEADLINE_SECONDS, "expected state")
    assert clients.failures == []
    assert clients.count(1) > 0 and clients.count(2) > 0


# -- 4. corrupt versions, models removed from the config file ---------------------------------


def test_corrupt_version_leaves_previous_serving(
    serve_process: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    base = tmp_path / "m"
    build_multi(base / "1")
    build_multi(base / "2")
    server = serve_process(
        "--model_name=m", f"--model_base_path={base}", "--file_system_poll_wait_seconds=0.5"
    )
    server.wait_ready(model="m")
    publish_version(
        base, 3, lambda d: (d.mkdir(), (d / "model.onnx").write_bytes(b"\x08\x07not an onnx model"))
    )
    channel, stub, model_stub = stubs(server)
    with channel:
        wait_until(
            lambda: version_states(model_stub, "m").get(3, ("", 0))[1] != 0,
            DEADLINE_SECONDS,
            "expected state",
        )
        states = version_states(model_stub, "m")
        state, code, message = states[3]
        print(f"\nversion 3: {state} code={code} message={message!r}")
        assert message and "model.onnx" in message
        assert states[2][0] == "AVAILABLE"
        response = stub.Predict(predict_request("m", multi_inputs(1)), timeout=10)
        assert response.model_spec.version.value == 2
    rest = httpx.get(f"{server.rest_url}/v1/models/m/versions/3", timeout=10).json()
    assert rest["model_version_status"][0]["status"]["error_code"] != "OK"


def test_removing_model_from_config_file_unloads_it(
    serve_process: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    build_multi(tmp_path / "a" / "1")
    build_multi(tmp_path / "b" / "1")
    config_file = tmp_path / "models.config"
    config_file.write_text(
        config_text(model_entry("a", tmp_path / "a"), model_entry("b", tmp_path / "b"))
    )
    server = serve_process(
        f"--model_config_file={config_file}", "--model_config_file_poll_wait_seconds=0.5"
    )
    server.wait_ready(model="b")
    url = server.rest_url + "/v1/models/{}:predict"
    row = {"instances": [{"x": [1, 2, 3, 4], "ids": [1, 2], "names": "a"}]}
    assert httpx.post(url.format("b"), json=row, timeout=10).status_code == 200
    config_file.write_text(config_text(model_entry("a", tmp_path / "a")))
    wait_until(
        lambda: httpx.post(url.format("b"), json=row, timeout=10).status_code == 404,
        DEADLINE_SECONDS,
        "expected state",
    )
    assert httpx.post(url.format("a"), json=row, timeout=10).status_code == 200
    assert "error" in httpx.post(url.format("b"), json=row, timeout=10).json()


# -- 5. bad input ----------------------------------------------------------------------------


def grpc_error(call: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as error:
        call()
    return error.value.code(), error.value.details()


def test_bad_requests_get_clear_errors_without_disturbing_others(zoo_server: ServerProcess) -> None:
    good = multi_inputs(2)
    channel, stub, _ = stubs(zoo_server)
    with (
        channel,
        ClosedLoopClients(zoo_server, lambda: predict_request("m", good, version=1)) as clients,
    ):
        wait_until(lambda: clients.count(1) >= 10, DEADLINE_SECONDS, "expected state")
        check_grpc_errors(stub, good)
        check_rest_errors(zoo_server.rest_url)
        served_before = clients.count(1)
        wait_until(
            lambda: clients.count(1) >= served_before + 10, DEADLINE_SECONDS, "expected state"
        )
    assert clients.failures == []
    assert zoo_server.process.poll() is None


def check_grpc_errors(stub: object, good: dict[str, np.ndarray]) -> None:
    predict = stub.Predict  # type: ignore[attr-defined]
    NF, IA = grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT
    code, details = grpc_error(lambda: predict(predict_request("nope", good), timeout=10))
    assert code == NF and "nope" in details
    code, details = grpc_error(lambda: predict(predict_request("m", good, version=7), timeout=10))
    assert code == NF and "7" in details
    # TF Serving answers an unknown label with INVALID_ARGUMENT; we say NOT_FOUND (issue 4).
    code, details = grpc_error(
        lambda: predict(predict_request("m", good, label="beta"), timeout=10)
    )
    assert code == NF and "beta" in details
    code, details = grpc_error(
        lambda: predict(predict_request("m", {**good, "extra": good["x"]}), timeout=10)
    )
    assert code == IA and "'extra'" in details and "serving_default" in details
    code, details = grpc_error(
        lambda: predict(
            predict_request("m", {**good, "x": good["x"].astype(np.float64)}), timeout=10
        )
    )
    assert (
        code == IA
        and "'x'" in details
        and "float32[?,4]" in details
        and "serving_default" in details
    )
    code, details = grpc_error(
        lambda: predict(
            predict_request("m", {**good, "x": np.zeros((2, 3), np.float32)}), timeout=10
        )
    )
    assert code == IA and "'x'" in details and "[2,3]" in details
    request = predict_request("m", good)
    request.model_spec.signature_name = "nope_sig"
    code, details = grpc_error(lambda: predict(request, timeout=10))
    assert code == IA and "nope_sig" in details
    big = {**good, "x": np.zeros((70_000, 4), np.float32)}  # 1.1 MB > --grpc_max_message_bytes
    code, _ = grpc_error(lambda: predict(predict_request("m", big), timeout=10))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    metadata = get_model_metadata_pb2.GetModelMetadataRequest()
    metadata.model_spec.name = "m"
    metadata.metadata_field.append("graph")
    code, details = grpc_error(lambda: stub.GetModelMetadata(metadata, timeout=10))  # type: ignore[attr-defined]
    assert code == IA and "graph" in details


def check_rest_errors(base_url: str) -> None:
    row = {"instances": [{"x": [1, 2, 3, 4], "ids": [1, 2], "names": "a"}]}

    def post(path: str, **kwargs: object) -> tuple[int, str]:
        response = httpx.post(f"{base_url}{path}", timeout=10, **kwargs)  # type: ignore[arg-type]
        return response.status_code, response.json()["error"]

    status, error = post("/v1/models/nope:predict", json=row)
    assert status == 404 and "nope" in error
    status, error = post("/v1/models/m/versions/7:predict", json=row)
    assert status == 404 and "7" in error
    status, error = post(
        "/v1/models/m:predict", json={"instances": [{"x": [1, 2, 3], "ids": [1, 2], "names": "a"}]}
    )
    assert status == 400 and "'x'" in error and "serving_default" in error
    status, error = post(
        "/v1/models/m:predict", json={"instances": [{"q": [1], "ids": [1, 2], "names": "a"}]}
    )
    assert status == 400 and "'q'" in error
    status, error = post(
        "/v1/models/m:predict",
        json={"instances": [{"x": ["a", "b", "c", "d"], "ids": [1, 2], "names": "a"}]},
    )
    assert status == 400 and "x" in error
    status, error = post("/v1/models/m:predict", content=b'{"instances": [')
    assert status == 400 and "JSON" in error
    status, error = post(
        "/v1/models/m:predict",
        json={"instances": [{"x": [1, 2, 3, 4], "ids": [1, 2], "names": {"b64": "%%%"}}]},
    )
    assert status == 400 and "base64" in error.lower().replace("b64", "base64")
    status, error = post("/v1/models/m:predict", json={"instances": row["instances"], "inputs": {}})
    assert status == 400
    status, error = post("/v1/models/m:predict", content=b"0" * (1024 * 1024 + 1))
    assert status == 413 and "exceeds" in error
    status, error = post("/v1/models/m:frobnicate", json=row)
    assert status == 404


# -- 6. numeric parity -----------------------------------------------------------------------


def parity_inputs() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(42)
    x = rng.standard_normal((64, 4)).astype(np.float32) * np.float32(1e3)
    x[0] = [np.float32(1e-45), -0.0, np.finfo(np.float32).max / 4, np.finfo(np.float32).tiny]
    ids = rng.integers(-(2**62), 2**62, (64, 2), dtype=np.int64)
    names = strings(*[f"row {i} — ünïcødé ✓ {i * 7}".encode() for i in range(63)], b"")
    return {"x": x, "ids": ids, "names": names}


def reference_outputs(model_path: Path, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    names = np.array([item.decode() for item in inputs["names"]], dtype=object)
    feed = {**inputs, "names": names}
    y, ids_out, names_out = session.run(["y", "ids_out", "names_out"], feed)
    return {
        "y": y,
        "ids_out": ids_out,
        "names_out": np.array([s.encode() for s in names_out], dtype=object),
    }


def assert_bitwise_equal(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert set(got) == set(want)
    for name in ("y", "ids_out"):
        assert got[name].dtype == want[name].dtype and got[name].shape == want[name].shape, name
        assert got[name].tobytes() == want[name].tobytes(), name
    assert list(got["names_out"]) == list(want["names_out"])


@pytest.mark.parametrize("form", ["tensor_content", "val"])
def test_grpc_outputs_equal_onnxruntime_bit_for_bit(
    zoo_server: ServerProcess, zoo: Path, form: str
) -> None:
    inputs = parity_inputs()
    want = reference_outputs(zoo / "m" / "1" / "model.onnx", inputs)
    encode = content_proto if form == "tensor_content" else val_proto
    channel, stub, _ = stubs(zoo_server)
    with channel:
        response = stub.Predict(predict_request("m", inputs, encode, version=1), timeout=10)
    got = {name: to_numpy(proto) for name, proto in response.outputs.items()}
    got["names_out"] = got["names_out"].astype(object)
    assert_bitwise_equal(got, want)


def test_rest_outputs_equal_onnxruntime_bit_for_bit(zoo_server: ServerProcess, zoo: Path) -> None:
    inputs = parity_inputs()
    want = reference_outputs(zoo / "m" / "1" / "model.onnx", inputs)
    body = {
        "inputs": {
            "x": inputs["x"].tolist(),  # float32 → Python float → shortest repr: exact round trip
            "ids": inputs["ids"].tolist(),
            "names": [s.decode() for s in inputs["names"]],
        }
    }
    response = httpx.post(
        f"{zoo_server.rest_url}/v1/models/m/versions/1:predict", json=body, timeout=30
    )
    assert response.status_code == 200, response.text
    outputs = response.json()["outputs"]
    got = {
        "y": np.array(outputs["y"], dtype=np.float64).astype(np.float32),
        "ids_out": np.array(outputs["ids_out"], dtype=np.int64),
        "names_out": np.array([s.encode() for s in outputs["names_out"]], dtype=object),
    }
    assert_bitwise_equal(got, want)


# -- graceful shutdown -----------------------------------------------------------------------


def test_sigterm_stops_gracefully_under_load(
    serve_process: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    build_multi(tmp_path / "m" / "1")
    server = serve_process("--model_name=m", f"--model_base_path={tmp_path / 'm'}")
    server.wait_ready(model="m")
    inputs = multi_inputs(2)
    with ClosedLoopClients(server, lambda: predict_request("m", inputs)) as clients:
        wait_until(lambda: clients.count(1) >= 20, DEADLINE_SECONDS, "expected state")
        assert server.stop() == 0
    # Calls racing the stop are refused (UNAVAILABLE, or CANCELLED when gRPC had accepted the
    # stream but not yet dispatched it); calls being handled finish (test_server_app.py).
    refused = {"StatusCode.UNAVAILABLE", "StatusCode.CANCELLED"}
    assert {failure.split(":")[0] for failure in clients.failures} <= refused
    assert "streamserve: shutting down" in server.stderr()
