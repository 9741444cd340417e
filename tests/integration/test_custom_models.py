"""Custom Python models (``model.py``) and scikit-learn models (``model.joblib``) served by a
real ``streamserve serve`` process, two versions each, through every client: tritonclient
(HTTP + gRPC), tensorflow-serving-api (gRPC) and curl (TF Serving REST + V2 REST).

Every answer is compared with calling the saved pipeline in-process for the version that
answered. The server runs with dynamic batching, version labels and an A/B split.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp

from tests.custom_models import (
    build_both,
    expected_python,
    expected_sklearn,
    sample_rows,
    serve_both,
)

if TYPE_CHECKING:
    from .conftest import ServerProcess

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

tfs_predict = pytest.importorskip("tensorflow_serving.apis.predict_pb2")
from tensorflow.core.framework import tensor_pb2, types_pb2  # noqa: E402
from tensorflow_serving.apis import (  # noqa: E402
    get_model_metadata_pb2,
    predict_pb2,
    prediction_service_pb2_grpc,
)

ROWS = 5
CONFIG = """
model_config_list {{
  config {{
    name: "pyiris" base_path: "{pyiris}"
    model_version_policy {{ all {{}} }}
    version_labels {{ key: "stable" value: 1 }}
    version_labels {{ key: "canary" value: 2 }}
  }}
  config {{
    name: "skiris" base_path: "{skiris}"
    model_version_policy {{ all {{}} }}
    version_labels {{ key: "stable" value: 1 }}
    version_labels {{ key: "canary" value: 2 }}
  }}
}}
"""
# model → (input name, input dtype, {signature: output names})
MODELS = {
    "pyiris": ("x", np.float32, {"serving_default": ("label", "probabilities")}),
    "skiris": (
        "inputs",
        np.float64,
        {"serving_default": ("predictions",), "predict_proba": ("probabilities",)},
    ),
}


@pytest.fixture(scope="module")
def bases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build_both(tmp_path_factory.mktemp("custom"))


@pytest.fixture(scope="module")
def server(
    bases: dict[str, Path],
    tmp_path_factory: pytest.TempPathFactory,
    serve_process_module: Callable[..., ServerProcess],
) -> ServerProcess:
    return serve_both(
        serve_process_module,
        tmp_path_factory.mktemp("config"),
        CONFIG.format(**bases),
        split={name: {"stable": 50, "canary": 50} for name in MODELS},
    )


def expected(bases: dict[str, Path], model: str, version: int, x: np.ndarray) -> dict:
    if model == "pyiris":
        return expected_python(bases[model], version, x)
    return expected_sklearn(bases[model], version, x)


def assert_outputs(
    bases: dict[str, Path], model: str, version: int, x: np.ndarray, got: dict[str, np.ndarray]
) -> None:
    want = expected(bases, model, version, x)
    assert got, "no outputs"
    for name, array in got.items():
        np.testing.assert_allclose(np.asarray(array), want[name], rtol=1e-6, atol=1e-7)


def rows(model: str) -> np.ndarray:
    return sample_rows(ROWS).astype(MODELS[model][1])


def signatures(model: str) -> list[tuple[str, tuple[str, ...]]]:
    return list(MODELS[model][2].items())


# -- tritonclient (KServe V2) ----------------------------------------------------------------


def _triton_infer(client: object, module: object, model: str, version: str, x: np.ndarray):  # type: ignore[no-untyped-def]
    name = MODELS[model][0]
    dtype = "FP32" if x.dtype == np.float32 else "FP64"
    tensor = module.InferInput(name, list(x.shape), dtype)  # type: ignore[attr-defined]
    tensor.set_data_from_numpy(x)
    return client.infer(model, [tensor], model_version=version)  # type: ignore[attr-defined]


@pytest.mark.parametrize("transport", ["http", "grpc"])
@pytest.mark.parametrize("model", list(MODELS))
@pytest.mark.parametrize("version", [1, 2])
def test_tritonclient(
    server: ServerProcess, bases: dict[str, Path], transport: str, model: str, version: int
) -> None:
    module = thttp if transport == "http" else tgrpc
    address = server.rest_url.removeprefix("http://") if transport == "http" else server.grpc_target
    client = module.InferenceServerClient(address)
    try:
        x = rows(model)
        result = _triton_infer(client, module, model, str(version), x)
        outputs = MODELS[model][2]["serving_default"]
        got = {name: result.as_numpy(name) for name in outputs}
        assert_outputs(bases, model, version, x, got)
        metadata = client.get_model_metadata(model, str(version))
    finally:
        client.close()
    inputs = (
        metadata["inputs"]
        if transport == "http"
        else [
            {"name": t.name, "datatype": t.datatype, "shape": list(t.shape)}
            for t in metadata.inputs
        ]
    )
    assert inputs == [
        {"name": MODELS[model][0], "datatype": "FP32" if model == "pyiris" else "FP64",
         "shape": [-1, 4]}
    ]  # fmt: skip
    platform = metadata["platform"] if transport == "http" else metadata.platform
    assert platform == {"pyiris": "python", "skiris": "sklearn"}[model]  # from the runtime


# -- tensorflow-serving-api (gRPC) -----------------------------------------------------------


def _tf_tensor(x: np.ndarray) -> tensor_pb2.TensorProto:
    dtype = types_pb2.DT_FLOAT if x.dtype == np.float32 else types_pb2.DT_DOUBLE
    proto = tensor_pb2.TensorProto(dtype=dtype, tensor_content=x.tobytes())
    for size in x.shape:
        proto.tensor_shape.dim.add(size=size)
    return proto


def _tf_array(proto: tensor_pb2.TensorProto) -> np.ndarray:
    dtypes = {types_pb2.DT_FLOAT: np.float32, types_pb2.DT_DOUBLE: np.float64,
              types_pb2.DT_INT64: np.int64}  # fmt: skip
    shape = [d.size for d in proto.tensor_shape.dim]
    return np.frombuffer(proto.tensor_content, dtypes[proto.dtype]).reshape(shape)


@pytest.mark.parametrize("model", list(MODELS))
@pytest.mark.parametrize("label", ["stable", "canary", None])
def test_tensorflow_serving_api(
    server: ServerProcess, bases: dict[str, Path], model: str, label: str | None
) -> None:
    x = rows(model)
    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        for signature, outputs in signatures(model):
            request = predict_pb2.PredictRequest()
            request.model_spec.name = model
            request.model_spec.signature_name = signature
            if label is not None:
                request.model_spec.version_label = label
            request.inputs[MODELS[model][0]].CopyFrom(_tf_tensor(x))
            response = stub.Predict(request, timeout=30)
            version = response.model_spec.version.value
            if label is not None:
                assert version == {"stable": 1, "canary": 2}[label]
            got = {name: _tf_array(response.outputs[name]) for name in outputs}
            assert set(response.outputs) == set(outputs)
            assert_outputs(bases, model, version, x, got)
        metadata = stub.GetModelMetadata(
            get_model_metadata_pb2.GetModelMetadataRequest(
                model_spec={"name": model}, metadata_field=["signature_def"]
            ),
            timeout=30,
        )
    assert metadata.model_spec.name == model


def test_ab_split_serves_both_versions(server: ServerProcess, bases: dict[str, Path]) -> None:
    """No version named: the 50/50 split answers from both, each with its own outputs."""
    x = rows("skiris")
    seen: set[int] = set()
    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        for _ in range(40):
            request = predict_pb2.PredictRequest()
            request.model_spec.name = "skiris"
            request.inputs["inputs"].CopyFrom(_tf_tensor(x))
            response = stub.Predict(request, timeout=30)
            version = response.model_spec.version.value
            seen.add(version)
            got = {"predictions": _tf_array(response.outputs["predictions"])}
            assert_outputs(bases, "skiris", version, x, got)
            if seen == {1, 2}:
                break
    assert seen == {1, 2}


# -- curl (TF Serving REST and V2 REST) ------------------------------------------------------


def curl_json(url: str, body: object) -> tuple[int, dict]:
    result = subprocess.run(
        ["curl", "-sS", "-w", "\n%{http_code}", "-H", "Content-Type: application/json",
         "-d", json.dumps(body), url],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    text, _, status = result.stdout.rpartition("\n")
    return int(status), json.loads(text)


@pytest.mark.parametrize("model", list(MODELS))
@pytest.mark.parametrize("version", [1, 2])
def test_curl_tfserving_rest(
    server: ServerProcess, bases: dict[str, Path], model: str, version: int
) -> None:
    x = rows(model)
    url = f"{server.rest_url}/v1/models/{model}/versions/{version}:predict"
    for signature, outputs in signatures(model):
        body = {"signature_name": signature, "inputs": {MODELS[model][0]: x.tolist()}}
        status, answer = curl_json(url, body)
        assert status == 200, answer
        result = answer["outputs"]
        got = result if isinstance(result, dict) else {outputs[0]: result}
        assert_outputs(bases, model, version, x, {k: np.array(v) for k, v in got.items()})


@pytest.mark.parametrize("model", list(MODELS))
@pytest.mark.parametrize("version", [1, 2])
def test_curl_v2_rest(
    server: ServerProcess, bases: dict[str, Path], model: str, version: int
) -> None:
    x = rows(model)
    name = MODELS[model][0]
    datatype = "FP32" if model == "pyiris" else "FP64"
    url = f"{server.rest_url}/v2/models/{model}/versions/{version}/infer"
    tensor = {"name": name, "shape": list(x.shape), "datatype": datatype,
              "data": x.ravel().tolist()}  # fmt: skip
    status, answer = curl_json(url, {"inputs": [tensor]})
    assert status == 200, answer
    assert answer["model_version"] == str(version)
    got = {o["name"]: np.array(o["data"]).reshape(o["shape"]) for o in answer["outputs"]}
    assert_outputs(bases, model, version, x, got)


def test_curl_bad_input_names_the_signature(server: ServerProcess) -> None:
    status, answer = curl_json(
        f"{server.rest_url}/v1/models/pyiris:predict", {"inputs": {"x": [[1.0, 2.0]]}}
    )
    assert status == 400
    assert "input 'x': expected float32[?,4]" in answer["error"]


def test_concurrent_requests_go_through_the_dynamic_batcher(
    server: ServerProcess, bases: dict[str, Path]
) -> None:
    """16 concurrent single-row requests to one version: all correct, every row counted
    by the batcher's histogram (how they were merged depends on timing)."""
    import urllib.request
    from concurrent.futures import ThreadPoolExecutor

    from streamserve.processes import metric_value

    def scrape() -> float:
        with urllib.request.urlopen(f"{server.rest_url}/metrics", timeout=30) as response:
            text = response.read().decode()
        return metric_value(text, "streamserve_batch_size_sum", {"model": "pyiris", "version": "1"})

    before = scrape()
    x = rows("pyiris")[:1]
    url = f"{server.rest_url}/v1/models/pyiris/versions/1:predict"
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda _: curl_json(url, {"inputs": {"x": x.tolist()}}), range(16)))
    for status, answer in answers:
        assert status == 200, answer
        got = {k: np.array(v) for k, v in answer["outputs"].items()}
        assert_outputs(bases, "pyiris", 1, x, got)
    assert scrape() - before == 16
