"""Issue 12, defects 3 and 4: request bounding and status codes, on a real server process.

- A ~30-byte TF Serving request whose one ``float_val`` (or ``string_val``) "fills" a huge
  shape is refused with RESOURCE_EXHAUSTED before anything is allocated: the server's
  peak RSS (``VmHWM``) stays within 50 MB.
- Impossible shapes (2^62 x 2^62, 1000 dimensions) are INVALID_ARGUMENT, not INTERNAL.
- JSON nested 100k deep is 400 on every REST route; a wrong method is 405 with ``Allow``;
  ``GET /v2`` answers server metadata.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from streamserve.models.toy import build_multi
from streamserve.processes import ModelServerProcess
from streamserve.protos.tfs import predict_pb2, prediction_service_pb2_grpc, types_pb2
from streamserve.protos.v2 import grpc_service_pb2 as v2pb
from streamserve.protos.v2 import grpc_service_pb2_grpc as v2grpc

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

MB = 1024 * 1024


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModelServerProcess]:
    base = tmp_path_factory.mktemp("limits")
    build_multi(base / "m" / "1")
    flags = ["--model_name=m", f"--model_base_path={base / 'm'}", "--enable_model_warmup=false"]
    with ModelServerProcess(flags, base / "server.log") as process:
        process.wait_ready(model="m")
        yield process


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def _fill_request(name: str, dtype: int, shape: list[int], **values: list[Any]) -> Any:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "m"
    tensor = request.inputs[name]
    tensor.dtype = dtype
    for size in shape:
        tensor.tensor_shape.dim.add().size = size
    for field, items in values.items():
        getattr(tensor, field).extend(items)
    return request


def _predict_error(server: ModelServerProcess, request: Any) -> grpc.RpcError:
    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)  # type: ignore[no-untyped-call]
        with pytest.raises(grpc.RpcError) as caught:
            stub.Predict(request, timeout=60)
    return caught.value


def _serves(server: ModelServerProcess) -> bool:
    row = {"instances": [{"x": [1, 2, 3, 4], "ids": [1, 2], "names": "a"}]}
    reply = httpx.post(f"{server.rest_url}/v1/models/m:predict", json=row, timeout=30)
    return reply.status_code == 200


# -- defect 3: fill requests ----------------------------------------------------------------


def test_fill_requests_are_refused_before_allocating(server: ModelServerProcess) -> None:
    requests = {
        "float": _fill_request("x", types_pb2.DT_FLOAT, [4194304, 64], float_val=[1.0]),
        "string": _fill_request("names", types_pb2.DT_STRING, [4194304, 8], string_val=[b"a"]),
    }
    peak_before = _status_kib(server.pid, "VmHWM")
    rss_before = _status_kib(server.pid, "VmRSS")
    errors = {}
    for kind, request in requests.items():
        assert request.ByteSize() < 64, kind
        errors[kind] = _predict_error(server, request)
    grown = (_status_kib(server.pid, "VmHWM") - peak_before) * 1024
    rss_grown = (_status_kib(server.pid, "VmRSS") - rss_before) * 1024
    print(f"\npeak RSS grew {grown / MB:.1f} MB, RSS {rss_grown / MB:.1f} MB")
    assert grown < 50 * MB and rss_grown < 50 * MB
    for kind, error in errors.items():
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, (kind, error.details())
        assert "--max_request_tensor_elements" in error.details(), error.details()
    assert _serves(server)


# -- defect 4: status codes -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "values"),
    [
        ([2**62, 2**62], {"float_val": [1.0]}),
        ([1] * 1000, {"float_val": [1.0]}),
        ([1] * 1000, {"float_val": [1.0, 2.0]}),
    ],
)
def test_impossible_tf_shapes_are_invalid_argument(
    server: ModelServerProcess, shape: list[int], values: dict[str, list[Any]]
) -> None:
    error = _predict_error(server, _fill_request("x", types_pb2.DT_FLOAT, shape, **values))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()


@pytest.mark.parametrize("shape", [[2**62, 2**62], [1] * 1000])
def test_impossible_v2_shapes_are_invalid_argument(
    server: ModelServerProcess, shape: list[int]
) -> None:
    request = v2pb.ModelInferRequest(model_name="m")
    tensor = request.inputs.add(name="x", datatype="FP32", shape=shape)
    tensor.contents.fp32_contents.append(1.0)
    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = v2grpc.GRPCInferenceServiceStub(channel)  # type: ignore[no-untyped-call]
        with pytest.raises(grpc.RpcError) as caught:
            stub.ModelInfer(request, timeout=60)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
    reply = httpx.post(
        f"{server.rest_url}/v2/models/m/infer",
        json={"inputs": [{"name": "x", "datatype": "FP32", "shape": shape, "data": [1.0]}]},
        timeout=30,
    )
    assert reply.status_code == 400, reply.text


POST_ROUTES = [
    "/v1/models/m:predict",
    "/v1/models/m/versions/1:predict",
    "/v1/models/m:classify",
    "/v1/models/m:regress",
    "/v2/models/m/infer",
    "/v2/models/m/versions/1/infer",
    "/v2/repository/index",
]


@pytest.mark.parametrize("path", POST_ROUTES)
def test_json_nested_100k_deep_is_400(server: ModelServerProcess, path: str) -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    for body in (deep, b'{"instances": ' + deep + b"}", b'{"inputs": ' + deep + b"}"):
        reply = httpx.post(f"{server.rest_url}{path}", content=body, timeout=30)
        assert reply.status_code == 400, (path, reply.status_code, reply.text[:200])
        assert "error" in reply.json()
    assert _serves(server)


def test_wrong_method_is_405_with_allow(server: ModelServerProcess) -> None:
    for method, path, allowed in (
        ("PUT", "/v1/models/m:predict", "POST"),
        ("GET", "/v2/models/m/infer", "POST"),
        ("DELETE", "/v2/health/live", "GET"),
        ("POST", "/v2", "GET"),
    ):
        reply = httpx.request(method, f"{server.rest_url}{path}", timeout=30)
        assert reply.status_code == 405, (method, path, reply.text)
        assert reply.headers["allow"] == allowed and "error" in reply.json()


def test_get_v2_answers_server_metadata(server: ModelServerProcess) -> None:
    for path in ("/v2", "/v2/"):
        reply = httpx.get(f"{server.rest_url}{path}", timeout=30)
        assert reply.status_code == 200, (path, reply.text)
        metadata = reply.json()
        assert metadata["name"] == "streamserve" and metadata["version"]
        assert "model_repository" in metadata["extensions"]
