"""Issue 6: TensorFlow SavedModel version dirs served through every API of ``streamserve serve``.

A small ``tf.Module`` (half_plus_two as in TF Serving's test data, plus a signature with
float/string/int64 inputs and outputs, plus a regress signature over serialized
``tf.Example`` protos) is exported into ``<base>/1`` (and a half_plus_three into
``<base>/2``), served by a real ``streamserve serve`` subprocess that *can* import
TensorFlow (``ModelServerProcess``, not conftest's ServerProcess which hides TensorFlow),
and every answer is compared with TensorFlow running the same SavedModel in-process:

- TF Serving gRPC (``tensorflow-serving-api`` stubs): Predict, Regress, GetModelMetadata;
- TF Serving REST (``httpx``): ``:predict`` rows and columns, ``:regress``, ``/metadata``;
- KServe V2 REST and gRPC (``tritonclient``): infer and model metadata.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest

from streamserve.processes import ModelServerProcess
from streamserve.runtimes import REGRESS_METHOD
from streamserve.waiting import wait_until

tf = pytest.importorskip("tensorflow", reason="tensorflow not installed (streamserve[tensorflow])")
pytest.importorskip("tensorflow_serving.apis.predict_pb2")
tritonclient_grpc = pytest.importorskip("tritonclient.grpc")
tritonclient_http = pytest.importorskip("tritonclient.http")

from tensorflow.core.framework import types_pb2  # noqa: E402
from tensorflow_serving.apis import (  # noqa: E402
    get_model_metadata_pb2,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)

pytestmark = [pytest.mark.integration, pytest.mark.tensorflow, pytest.mark.timeout(300)]

MODEL = "hpt"
MIXED = "mixed"
REGRESS = "regress_x_to_y"
DEFAULT = "serving_default"
RPC_TIMEOUT_SECONDS = 60.0
START_TIMEOUT_SECONDS = 180.0  # the child imports TensorFlow before it loads the model


class HalfPlus(tf.Module):  # type: ignore[misc]
    """y = 0.5 x + offset, served three ways."""

    def __init__(self, offset: float) -> None:
        super().__init__()
        self.a = tf.Variable(0.5, dtype=tf.float32)
        self.b = tf.Variable(offset, dtype=tf.float32)

    @tf.function(input_signature=[tf.TensorSpec([None, 1], tf.float32, name="x")])
    def half_plus(self, x: Any) -> dict[str, Any]:
        return {"y": self.a * x + self.b}

    @tf.function(
        input_signature=[
            tf.TensorSpec([None, 3], tf.float32, name="x"),
            tf.TensorSpec([None], tf.string, name="names"),
            tf.TensorSpec([None, 2], tf.int64, name="ids"),
        ]
    )
    def mixed(self, x: Any, names: Any, ids: Any) -> dict[str, Any]:
        return {
            "y": self.a * x + self.b,
            "greeting": tf.strings.join([b"hi ", names]),
            "ids_out": ids * 3 + 1,
            "total": tf.reduce_sum(ids, axis=1),
        }

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
    def regress(self, inputs: Any) -> dict[str, Any]:
        parsed = tf.io.parse_example(inputs, {"x": tf.io.FixedLenFeature([1], tf.float32)})
        return {"outputs": self.a * parsed["x"] + self.b}


def export(version_dir: Path, offset: float) -> None:
    module = HalfPlus(offset)
    signatures = {DEFAULT: module.half_plus, MIXED: module.mixed, REGRESS: module.regress}
    tf.saved_model.save(module, str(version_dir), signatures=signatures)
    # TF 2 writes every signature as predict; mark regress as TF 1 exporters (and
    # TF Serving's half_plus_two) did.
    from tensorflow.core.protobuf import saved_model_pb2

    path = version_dir / "saved_model.pb"
    saved_model = saved_model_pb2.SavedModel.FromString(path.read_bytes())
    saved_model.meta_graphs[0].signature_def[REGRESS].method_name = REGRESS_METHOD
    path.write_bytes(saved_model.SerializeToString())


@pytest.fixture(scope="module")
def base_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("savedmodel") / MODEL
    export(base / "1", offset=2.0)
    export(base / "2", offset=3.0)
    return base


@pytest.fixture(scope="module")
def server(base_path: Path) -> Iterator[ModelServerProcess]:
    config = base_path.parent / "models.config"
    config.write_text(
        "model_config_list {\n"
        f'  config {{ name: "{MODEL}" base_path: "{base_path}" model_platform: "tensorflow"\n'
        "           model_version_policy { all {} } }\n"
        "}\n"
    )
    process = ModelServerProcess([f"--model_config_file={config}"], base_path.parent / "server.log")
    with process:
        process.wait_ready(START_TIMEOUT_SECONDS, model=MODEL)
        wait_for_version(process, 1)
        yield process


def wait_for_version(process: ModelServerProcess, version: int) -> None:
    """``wait_ready`` waits for the model; with policy ``all`` version 1 may load later."""
    url = f"{process.rest_url}/v1/models/{MODEL}/versions/{version}"
    wait_until(
        lambda: version_state(url) == "AVAILABLE",
        START_TIMEOUT_SECONDS,
        f"version {version} AVAILABLE",
        describe=process.log_tail,
    )


def version_state(url: str) -> str:
    statuses = httpx.get(url, timeout=5).json().get("model_version_status", [])
    return str(statuses[0]["state"]) if statuses else ""


@pytest.fixture(scope="module")
def reference(base_path: Path) -> dict[int, Any]:
    """The SavedModels as TensorFlow itself loads them, per version."""
    return {v: tf.saved_model.load(str(base_path / str(v))) for v in (1, 2)}


def expected(
    reference: dict[int, Any], version: int, signature: str, inputs: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    function = reference[version].signatures[signature]
    outputs = function(**{name: tf.constant(value) for name, value in inputs.items()})
    return {name: tensor.numpy() for name, tensor in outputs.items()}


def half_plus_inputs() -> dict[str, np.ndarray]:
    return {"x": np.array([[1.0], [2.0], [5.0], [-3.25]], dtype=np.float32)}


def mixed_inputs() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(6)
    return {
        "x": rng.standard_normal((3, 3)).astype(np.float32),
        "names": np.array([b"ada", b"grace", "\u00e9mile".encode()], dtype=object),
        "ids": rng.integers(-(2**40), 2**40, (3, 2), dtype=np.int64),
    }


def assert_same(ours: dict[str, np.ndarray], theirs: dict[str, np.ndarray]) -> None:
    assert set(ours) == set(theirs)
    for name, value in theirs.items():
        got = np.asarray(ours[name])
        if value.dtype == object:
            assert got.tolist() == value.tolist(), name
        else:
            assert got.dtype == value.dtype, (name, got.dtype, value.dtype)
            assert got.shape == value.shape, (name, got.shape, value.shape)
            assert np.array_equal(got, value), name  # bit-for-bit: same TF kernels


CASES = [(DEFAULT, half_plus_inputs), (MIXED, mixed_inputs)]


# -- TF Serving gRPC --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stub(server: ModelServerProcess) -> Iterator[prediction_service_pb2_grpc.PredictionServiceStub]:
    with grpc.insecure_channel(server.grpc_target) as channel:
        yield prediction_service_pb2_grpc.PredictionServiceStub(channel)


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize(("signature", "make_inputs"), CASES)
def test_tfserving_grpc_predict_matches_tensorflow(
    stub: prediction_service_pb2_grpc.PredictionServiceStub,
    reference: dict[int, Any],
    signature: str,
    make_inputs: Any,
    version: int,
) -> None:
    inputs = make_inputs()
    request = predict_pb2.PredictRequest()
    request.model_spec.name = MODEL
    request.model_spec.version.value = version
    request.model_spec.signature_name = signature
    for name, value in inputs.items():
        request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
    response = stub.Predict(request, timeout=RPC_TIMEOUT_SECONDS)
    assert response.model_spec.version.value == version
    assert response.model_spec.signature_name == signature
    ours = {name: tf.make_ndarray(proto) for name, proto in response.outputs.items()}
    assert_same(ours, expected(reference, version, signature, inputs))


def test_tfserving_grpc_default_is_latest_version_half_plus_three(
    stub: prediction_service_pb2_grpc.PredictionServiceStub,
) -> None:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = MODEL
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.array([[2.0]], np.float32)))
    response = stub.Predict(request, timeout=RPC_TIMEOUT_SECONDS)
    assert response.model_spec.version.value == 2
    assert tf.make_ndarray(response.outputs["y"]).tolist() == [[4.0]]


def tf_example(x: float) -> Any:
    feature = tf.train.Feature(float_list=tf.train.FloatList(value=[x]))
    return tf.train.Example(features=tf.train.Features(feature={"x": feature}))


def test_tfserving_grpc_regress_matches_tensorflow(
    stub: prediction_service_pb2_grpc.PredictionServiceStub, reference: dict[int, Any]
) -> None:
    values = [1.0, 4.0, -2.5]
    request = regression_pb2.RegressionRequest()
    request.model_spec.name = MODEL
    request.model_spec.version.value = 1
    request.model_spec.signature_name = REGRESS
    for value in values:
        request.input.example_list.examples.append(tf_example(value))
    response = stub.Regress(request, timeout=RPC_TIMEOUT_SECONDS)
    ours = [r.value for r in response.result.regressions]
    serialized = np.array([tf_example(v).SerializeToString() for v in values], dtype=object)
    theirs = expected(reference, 1, REGRESS, {"inputs": serialized})["outputs"][:, 0]
    assert ours == theirs.tolist() == [2.5, 4.0, 0.75]


def test_tfserving_grpc_bad_dtype_is_invalid_argument(
    stub: prediction_service_pb2_grpc.PredictionServiceStub,
) -> None:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = MODEL
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.array([[1.0]], np.float64)))
    with pytest.raises(grpc.RpcError) as caught:
        stub.Predict(request, timeout=RPC_TIMEOUT_SECONDS)
    print(f"float64 for float32: {caught.value.code()} {caught.value.details()}")
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "'x'" in caught.value.details()


def test_tfserving_grpc_metadata_mirrors_signature_defs(
    stub: prediction_service_pb2_grpc.PredictionServiceStub, base_path: Path
) -> None:
    from tensorflow.core.protobuf import saved_model_pb2

    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = MODEL
    request.model_spec.version.value = 1
    response = stub.GetModelMetadata(request, timeout=RPC_TIMEOUT_SECONDS)
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    assert response.metadata["signature_def"].Unpack(signature_map)
    ours = signature_map.signature_def

    saved = saved_model_pb2.SavedModel.FromString((base_path / "1" / "saved_model.pb").read_bytes())
    theirs = saved.meta_graphs[0].signature_def
    assert {DEFAULT, MIXED, REGRESS} <= set(ours)
    for name in (DEFAULT, MIXED, REGRESS):
        print(
            f"{name}: {ours[name].method_name} inputs={sorted(ours[name].inputs)} "
            f"outputs={sorted(ours[name].outputs)}"
        )
        assert ours[name].method_name == theirs[name].method_name
        for ours_side, theirs_side in (
            (ours[name].inputs, theirs[name].inputs),
            (ours[name].outputs, theirs[name].outputs),
        ):
            assert set(ours_side) == set(theirs_side)
            for key in theirs_side:
                assert ours_side[key].dtype == theirs_side[key].dtype, (name, key)
                assert dims(ours_side[key]) == dims(theirs_side[key]), (name, key)
    assert ours[MIXED].inputs["names"].dtype == types_pb2.DT_STRING
    assert ours[MIXED].outputs["ids_out"].dtype == types_pb2.DT_INT64


def dims(info: Any) -> list[int] | None:
    shape = info.tensor_shape
    return None if shape.unknown_rank else [d.size for d in shape.dim]


# -- TF Serving REST --------------------------------------------------------------------------


def rest_value(value: Any) -> Any:
    """Undo the REST encoding of strings ({"b64": ...} or text) back to bytes."""
    if isinstance(value, dict) and set(value) == {"b64"}:
        return base64.b64decode(value["b64"])
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, list):
        return [rest_value(v) for v in value]
    return value


def rest_array(value: Any, like: np.ndarray) -> np.ndarray:
    if like.dtype == object:
        return np.array(rest_value(value), dtype=object)
    return np.array(value, dtype=like.dtype)


def json_value(array: np.ndarray) -> Any:
    if array.dtype == object:
        return [v.decode() for v in array.tolist()]
    return array.tolist()


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize(("signature", "make_inputs"), CASES)
def test_tfserving_rest_predict_rows_and_columns_match_tensorflow(
    server: ModelServerProcess,
    reference: dict[int, Any],
    signature: str,
    make_inputs: Any,
    version: int,
) -> None:
    inputs = make_inputs()
    theirs = expected(reference, version, signature, inputs)
    url = f"{server.rest_url}/v1/models/{MODEL}/versions/{version}:predict"
    count = len(next(iter(inputs.values())))
    instances = [{n: json_value(v)[i] for n, v in inputs.items()} for i in range(count)]
    rows = httpx.post(url, json={"signature_name": signature, "instances": instances}, timeout=60)
    assert rows.status_code == 200, rows.text
    predictions = rows.json()["predictions"]
    if len(theirs) == 1:  # a single output: each prediction is the bare value
        (name,) = theirs
        predictions = [{name: p} for p in predictions]
    ours = {n: rest_array([p[n] for p in predictions], theirs[n]) for n in theirs}
    assert_same(ours, theirs)

    columns_body = {
        "signature_name": signature,
        "inputs": {n: json_value(v) for n, v in inputs.items()},
    }
    columns = httpx.post(url, json=columns_body, timeout=60)
    assert columns.status_code == 200, columns.text
    outputs = columns.json()["outputs"]
    if len(theirs) == 1:
        outputs = {next(iter(theirs)): outputs}
    assert_same({n: rest_array(outputs[n], theirs[n]) for n in theirs}, theirs)


def test_tfserving_rest_regress_matches_tensorflow(server: ModelServerProcess) -> None:
    body = {"signature_name": REGRESS, "examples": [{"x": 1.0}, {"x": [4.0]}, {"x": -2.5}]}
    reply = httpx.post(
        f"{server.rest_url}/v1/models/{MODEL}/versions/1:regress", json=body, timeout=60
    )
    assert reply.status_code == 200, reply.text
    assert reply.json()["result"] == [2.5, 4.0, 0.75]


def test_tfserving_rest_bad_input_is_400(server: ModelServerProcess) -> None:
    body = {"instances": [{"x": ["not", "numbers"]}]}
    reply = httpx.post(f"{server.rest_url}/v1/models/{MODEL}:predict", json=body, timeout=60)
    print(f"strings for float32: {reply.status_code} {reply.text}")
    assert reply.status_code == 400
    assert reply.json()["error"]


def test_tfserving_rest_metadata_lists_signatures(server: ModelServerProcess) -> None:
    reply = httpx.get(f"{server.rest_url}/v1/models/{MODEL}/versions/1/metadata", timeout=60)
    assert reply.status_code == 200, reply.text
    defs = reply.json()["metadata"]["signature_def"]["signature_def"]
    assert {DEFAULT, MIXED, REGRESS} <= set(defs)
    assert defs[REGRESS]["method_name"] == REGRESS_METHOD
    assert defs[MIXED]["inputs"]["names"]["dtype"] == "DT_STRING"
    assert defs[MIXED]["outputs"]["ids_out"]["dtype"] == "DT_INT64"
    assert defs[DEFAULT]["outputs"]["y"]["dtype"] == "DT_FLOAT"


# -- KServe V2 (tritonclient) -----------------------------------------------------------------

V2_TYPES = {np.dtype(np.float32): "FP32", np.dtype(np.int64): "INT64", np.dtype(object): "BYTES"}


def v2_inputs(module: Any, inputs: dict[str, np.ndarray], binary: bool | None) -> list[Any]:
    infer_inputs = []
    for name, value in inputs.items():
        infer_input = module.InferInput(name, list(value.shape), V2_TYPES[value.dtype])
        if binary is None:
            infer_input.set_data_from_numpy(value)
        else:
            infer_input.set_data_from_numpy(value, binary_data=binary)
        infer_inputs.append(infer_input)
    return infer_inputs


def v2_parameters(signature: str) -> dict[str, str] | None:
    """V2 has no signature field: ``parameters.signature_name`` (default: serving_default)."""
    return None if signature == DEFAULT else {"signature_name": signature}


@pytest.mark.parametrize("binary", [False, True])
@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize(("signature", "make_inputs"), CASES)
def test_v2_rest_infer_matches_tensorflow(
    server: ModelServerProcess,
    reference: dict[int, Any],
    signature: str,
    make_inputs: Any,
    version: int,
    binary: bool,
) -> None:
    inputs = make_inputs()
    theirs = expected(reference, version, signature, inputs)
    client = tritonclient_http.InferenceServerClient(server.rest_url.removeprefix("http://"))
    try:
        wanted = [tritonclient_http.InferRequestedOutput(n, binary_data=binary) for n in theirs]
        result = client.infer(
            MODEL,
            v2_inputs(tritonclient_http, inputs, binary),
            model_version=str(version),
            outputs=wanted,
            parameters=v2_parameters(signature),
        )
        assert result.get_response()["model_version"] == str(version)
        assert_same({n: as_bytes(result.as_numpy(n)) for n in theirs}, theirs)
    finally:
        client.close()


def as_bytes(array: np.ndarray) -> np.ndarray:
    """tritonclient.http gives JSON (non-binary) BYTES outputs as ``str``; TF gives bytes."""
    if array.dtype != object:
        return array
    flat = [v.encode() if isinstance(v, str) else v for v in array.ravel().tolist()]
    return np.array(flat, dtype=object).reshape(array.shape)


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize(("signature", "make_inputs"), CASES)
def test_v2_grpc_infer_matches_tensorflow(
    server: ModelServerProcess,
    reference: dict[int, Any],
    signature: str,
    make_inputs: Any,
    version: int,
) -> None:
    inputs = make_inputs()
    theirs = expected(reference, version, signature, inputs)
    client = tritonclient_grpc.InferenceServerClient(server.grpc_target)
    try:
        result = client.infer(
            MODEL,
            v2_inputs(tritonclient_grpc, inputs, None),
            model_version=str(version),
            parameters=v2_parameters(signature),
        )
        assert result.get_response().model_version == str(version)
        assert_same({n: result.as_numpy(n) for n in theirs}, theirs)
    finally:
        client.close()


def test_v2_metadata_over_rest_and_grpc(server: ModelServerProcess) -> None:
    rest = tritonclient_http.InferenceServerClient(server.rest_url.removeprefix("http://"))
    rpc = tritonclient_grpc.InferenceServerClient(server.grpc_target)
    try:
        assert rest.is_model_ready(MODEL, "1") and rpc.is_model_ready(MODEL, "2")
        rest_meta = rest.get_model_metadata(MODEL, "1")
        grpc_meta = rpc.get_model_metadata(MODEL, "1", as_json=True)
    finally:
        rest.close()
        rpc.close()
    print(f"V2 metadata: {rest_meta}")
    for meta in (rest_meta, grpc_meta):
        assert meta["name"] == MODEL
        assert [(t["name"], t["datatype"]) for t in meta["inputs"]] == [("x", "FP32")]
        assert [(t["name"], t["datatype"]) for t in meta["outputs"]] == [("y", "FP32")]
        assert [int(d) for d in meta["inputs"][0]["shape"]] == [-1, 1]
