"""KServe V2 against a real ``streamserve serve`` process, driven by tritonclient (HTTP + gRPC).

One server for the module, serving:
- ``multi`` (x FP32 [N,4] → y=2x; ids INT64 [N,2] → ids+1; names BYTES [N] → echo),
- ``ab``: two versions of ``tiny`` split 90/10 between labels stable (1) / canary (2),
- ``batched``: ``multi`` with its own ``batching_params.pbtxt`` (a long batch timeout),
with ``--enable_batching`` and a server-wide batching parameters file.
"""

from __future__ import annotations

import asyncio
import json
import queue
import struct
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.grpc.aio as tgrpc_aio
import tritonclient.http as thttp
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from streamserve.models.toy import build_multi, build_tiny
from streamserve.processes import ModelServerProcess

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

STARTUP_SECONDS = 60.0


class Served(ModelServerProcess):
    """``streamserve serve`` with the V2 test repository."""

    @property
    def rest(self) -> str:
        return f"127.0.0.1:{self.rest_port}"

    @property
    def grpc(self) -> str:
        return self.grpc_target


def write_repository(root: Path) -> Path:
    build_multi(root / "multi" / "1")
    build_tiny(root / "ab" / "1", seed=1)
    build_tiny(root / "ab" / "2", seed=2)
    build_multi(root / "batched" / "1")
    (root / "batched" / "batching_params.pbtxt").write_text(
        "max_batch_size { value: 32 }\nbatch_timeout_micros { value: 200000 }\n"
    )
    (root / "models.config").write_text(
        "model_config_list {\n"
        "  config { name: 'multi' base_path: 'multi' model_platform: 'onnx' }\n"
        "  config { name: 'batched' base_path: 'batched' model_platform: 'onnx' }\n"
        "  config { name: 'ab' base_path: 'ab' model_platform: 'onnx'\n"
        "    model_version_policy { specific { versions: 1 versions: 2 } }\n"
        "    version_labels { key: 'stable' value: 1 }\n"
        "    version_labels { key: 'canary' value: 2 } }\n"
        "}\n"
    )
    (root / "splits.json").write_text(json.dumps({"ab": {"stable": 90, "canary": 10}}))
    (root / "batching.txt").write_text(
        "max_batch_size { value: 32 }\nbatch_timeout_micros { value: 1000 }\n"
        "max_enqueued_batches { value: 1000 }\nnum_batch_threads { value: 2 }\n"
    )
    return root


def start_server(root: Path) -> Served:
    flags = [
        f"--model_config_file={root / 'models.config'}",
        f"--traffic_split_file={root / 'splits.json'}",
        "--enable_batching", f"--batching_parameters_file={root / 'batching.txt'}",
        "--file_system_poll_wait_seconds=0",
        "--model_control_mode=explicit", f"--model_repository_root={root}",
    ]  # fmt: skip
    server = Served(flags, root / "server.log").start()
    try:
        return server.wait_ready(STARTUP_SECONDS)
    except BaseException:
        server.stop()
        raise


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    served = start_server(write_repository(tmp_path_factory.mktemp("v2repo")))
    try:
        yield served
    finally:
        served.stop()


@pytest.fixture
def http(server: Served) -> Iterator[thttp.InferenceServerClient]:
    client = thttp.InferenceServerClient(server.rest)
    yield client
    client.close()


@pytest.fixture
def grpc_client(server: Served) -> Iterator[tgrpc.InferenceServerClient]:
    client = tgrpc.InferenceServerClient(server.grpc)
    yield client
    client.close()


def multi_inputs(rows: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x = np.arange(rows * 4, dtype=np.float32).reshape(rows, 4) / 7
    ids = np.arange(rows * 2, dtype=np.int64).reshape(rows, 2)
    names = np.array([f"row-{i}-é".encode() for i in range(rows)], dtype=object)
    return x, ids, names


def http_inputs(binary: bool, rows: int = 3) -> list[thttp.InferInput]:
    x, ids, names = multi_inputs(rows)
    inputs = []
    for name, array, datatype in (
        ("x", x, "FP32"),
        ("ids", ids, "INT64"),
        ("names", names, "BYTES"),
    ):
        tensor = thttp.InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array, binary_data=binary)
        inputs.append(tensor)
    return inputs


def grpc_inputs(rows: int = 3) -> list[tgrpc.InferInput]:
    x, ids, names = multi_inputs(rows)
    inputs = []
    for name, array, datatype in (
        ("x", x, "FP32"),
        ("ids", ids, "INT64"),
        ("names", names, "BYTES"),
    ):
        tensor = tgrpc.InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return inputs


def check_multi(result: object, rows: int = 3) -> None:
    x, ids, names = multi_inputs(rows)
    np.testing.assert_allclose(result.as_numpy("y"), 2 * x)  # type: ignore[attr-defined]
    np.testing.assert_array_equal(result.as_numpy("ids_out"), ids + 1)  # type: ignore[attr-defined]
    got = [v if isinstance(v, bytes) else v.encode() for v in result.as_numpy("names_out")]  # type: ignore[attr-defined]
    assert got == list(names)


def scrape(server: Served, path: str = "/monitoring/prometheus/metrics") -> dict:
    with urllib.request.urlopen(f"http://{server.rest}{path}", timeout=10) as response:
        text = response.read().decode()
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def metric(samples: dict, name: str, **labels: str) -> float:
    """Sum of the samples named ``name`` whose labels include ``labels``."""
    return sum(
        value
        for (sample_name, sample_labels), value in samples.items()
        if sample_name == name and set(labels.items()) <= set(sample_labels)
    )


def post(server: Served, path: str, body: bytes, headers: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    request = urllib.request.Request(
        f"http://{server.rest}{path}", data=body, headers=headers or {}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as error:
        return error.code, error.read(), dict(error.headers)


# -- health, metadata -----------------------------------------------------------------------


def test_health_and_server_metadata(
    http: thttp.InferenceServerClient, grpc_client: tgrpc.InferenceServerClient
) -> None:
    assert http.is_server_live() and http.is_server_ready()
    assert grpc_client.is_server_live() and grpc_client.is_server_ready()
    assert http.is_model_ready("multi") and grpc_client.is_model_ready("multi", "1")
    assert not http.is_model_ready("nope") and not grpc_client.is_model_ready("nope")
    assert not grpc_client.is_model_ready("multi", "7")
    metadata = http.get_server_metadata()
    assert metadata["name"] == "streamserve"
    assert {"binary_tensor_data", "model_repository"} <= set(metadata["extensions"])
    assert grpc_client.get_server_metadata().name == "streamserve"


def test_model_metadata(
    http: thttp.InferenceServerClient, grpc_client: tgrpc.InferenceServerClient
) -> None:
    expected_inputs = [
        {"name": "x", "datatype": "FP32", "shape": [-1, 4]},
        {"name": "ids", "datatype": "INT64", "shape": [-1, 2]},
        {"name": "names", "datatype": "BYTES", "shape": [-1]},
    ]
    metadata = http.get_model_metadata("multi")
    assert metadata["name"] == "multi" and metadata["versions"] == ["1"]
    assert metadata["inputs"] == expected_inputs
    assert [o["name"] for o in metadata["outputs"]] == ["y", "ids_out", "names_out"]
    over_grpc = grpc_client.get_model_metadata("ab", "2")
    assert over_grpc.versions == ["2"]
    assert [(t.name, t.datatype, list(t.shape)) for t in over_grpc.inputs] == [
        ("x", "FP32", [-1, 64])
    ]
    assert sorted(grpc_client.get_model_metadata("ab").versions) == ["1", "2"]
    with pytest.raises(InferenceServerException, match="nope"):
        http.get_model_metadata("nope")


# -- inference ------------------------------------------------------------------------------


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_http_infer(http: thttp.InferenceServerClient, binary: bool) -> None:
    outputs = [thttp.InferRequestedOutput(n, binary_data=binary) for n in ("y", "ids_out")]
    outputs.append(thttp.InferRequestedOutput("names_out", binary_data=True))
    result = http.infer("multi", http_inputs(binary), outputs=outputs, request_id="r-1")
    check_multi(result)
    response = result.get_response()
    assert response["model_name"] == "multi" and response["model_version"] == "1"
    assert response["id"] == "r-1"


def test_http_infer_all_outputs_binary_by_default(http: thttp.InferenceServerClient) -> None:
    result = http.infer("multi", http_inputs(True), model_version="1")
    check_multi(result)


def test_http_output_filter(http: thttp.InferenceServerClient) -> None:
    result = http.infer("multi", http_inputs(True), outputs=[thttp.InferRequestedOutput("y")])
    assert [o["name"] for o in result.get_response()["outputs"]] == ["y"]


def test_grpc_infer_raw(grpc_client: tgrpc.InferenceServerClient) -> None:
    result = grpc_client.infer("multi", grpc_inputs(), request_id="g-1")
    check_multi(result)
    response = result.get_response()
    assert response.model_version == "1" and response.id == "g-1"
    assert len(response.raw_output_contents) == 3


def test_grpc_infer_typed_contents(server: Served) -> None:
    x, ids, names = multi_inputs()
    request = service_pb2.ModelInferRequest(model_name="multi")
    for name, datatype, shape, field, values in (
        ("x", "FP32", x.shape, "fp32_contents", x.ravel().tolist()),
        ("ids", "INT64", ids.shape, "int64_contents", ids.ravel().tolist()),
        ("names", "BYTES", names.shape, "bytes_contents", list(names)),
    ):
        tensor = request.inputs.add(name=name, datatype=datatype, shape=list(shape))
        getattr(tensor.contents, field).extend(values)
    with grpc.insecure_channel(server.grpc) as channel:
        response = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request)
    assert not response.raw_output_contents
    by_name = {output.name: output for output in response.outputs}
    np.testing.assert_allclose(np.array(by_name["y"].contents.fp32_contents), 2 * x.ravel())
    assert list(by_name["ids_out"].contents.int64_contents) == (ids + 1).ravel().tolist()
    assert list(by_name["names_out"].contents.bytes_contents) == list(names)
    assert list(by_name["y"].shape) == [3, 4]


def test_grpc_stream_infer(grpc_client: tgrpc.InferenceServerClient) -> None:
    answers: queue.Queue[tuple[object, object]] = queue.Queue()
    grpc_client.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        for i in range(5):
            grpc_client.async_stream_infer("multi", grpc_inputs(), request_id=str(i))
        bad = tgrpc.InferInput("x", [1, 4], "FP32")
        bad.set_data_from_numpy(np.zeros((1, 4), np.float32))
        grpc_client.async_stream_infer("multi", [bad], request_id="bad")
        grpc_client.async_stream_infer("multi", grpc_inputs(), request_id="after")
        got = [answers.get(timeout=30) for _ in range(7)]
    finally:
        grpc_client.stop_stream()
    ok = [result for result, error in got if error is None]
    errors = [error for _, error in got if error is not None]
    assert [r.get_response().id for r in ok] == ["0", "1", "2", "3", "4", "after"]
    for result in ok:
        check_multi(result)
    assert len(errors) == 1 and "ids" in str(errors[0])


# -- repository extension --------------------------------------------------------------------


def test_repository_unload_and_load(
    http: thttp.InferenceServerClient, grpc_client: tgrpc.InferenceServerClient
) -> None:
    index = {(m["name"], m.get("version")): m["state"] for m in http.get_model_repository_index()}
    assert index[("multi", "1")] == "READY" and index[("ab", "2")] == "READY"

    http.unload_model("multi")
    assert not http.is_model_ready("multi")
    with pytest.raises(InferenceServerException, match="multi"):
        http.infer("multi", http_inputs(True))
    states = {m["name"]: m["state"] for m in http.get_model_repository_index()}
    assert states["multi"] == "UNAVAILABLE"
    http.load_model("multi")
    assert http.is_model_ready("multi")
    check_multi(http.infer("multi", http_inputs(True)))

    grpc_client.unload_model("multi")
    assert not grpc_client.is_model_ready("multi")
    ready_only = grpc_client.get_model_repository_index(as_json=True)
    assert "multi" in {m["name"] for m in ready_only["models"]}
    grpc_client.load_model("multi")
    assert grpc_client.is_model_ready("multi")
    check_multi(grpc_client.infer("multi", grpc_inputs()))
    with pytest.raises(InferenceServerException, match="base_path"):
        grpc_client.load_model("never-configured")


# -- bad input ------------------------------------------------------------------------------


def _json_tensor(**overrides: object) -> dict:
    tensor = {"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}
    tensor.update(overrides)
    return tensor


HEADER = "Inference-Header-Content-Length"


def _with_binary(tensors: list[dict], binary: bytes) -> tuple[bytes, dict[str, str]]:
    header = json.dumps({"inputs": tensors}).encode()
    return header + binary, {HEADER: str(len(header))}


BAD_HTTP = {
    "unknown datatype": ([_json_tensor(datatype="FP8")], b"", "FP8"),
    "shape/data mismatch": ([_json_tensor(shape=[2, 4])], b"", "do not match shape"),
    "raw wrong byte count": (
        [_json_tensor(data=None, parameters={"binary_data_size": 12})],
        struct.pack("<3f", 1, 2, 3),
        "x",
    ),
    "BYTES bad length prefix": (
        [
            {
                "name": "names",
                "datatype": "BYTES",
                "shape": [1],
                "parameters": {"binary_data_size": 6},
            }
        ],
        struct.pack("<I", 50) + b"ab",
        "names",
    ),
}


@pytest.mark.parametrize("case", list(BAD_HTTP))
def test_bad_http_input_is_400_and_server_keeps_serving(
    server: Served, http: thttp.InferenceServerClient, case: str
) -> None:
    tensors, binary, expected = BAD_HTTP[case]
    for tensor in tensors:
        if tensor.get("data", 0) is None:
            del tensor["data"]
    body, headers = _with_binary(tensors, binary)
    status, payload, _ = post(server, "/v2/models/multi/infer", body, headers)
    assert status == 400, payload
    message = json.loads(payload)["error"]
    assert expected in message
    print(f"{case}: 400 {message}")
    check_multi(http.infer("multi", http_inputs(True)))


MORE_BAD_HTTP = {
    "header length past the body": (b'{"inputs": []}', {HEADER: "999"}, 400, "Inference-Header"),
    "header length not a number": (b'{"inputs": []}', {HEADER: "ten"}, 400, "Inference-Header"),
    "binary bytes nobody claims": (
        *_with_binary([_json_tensor()], b"\0\0\0\0"), 400, "4 unexpected bytes"
    ),
    "not JSON": (b"{inputs", {}, 400, "JSON"),
    "JSON but not an object": (b"[1, 2]", {}, 400, "must be a JSON object"),
    "no inputs": (b'{"inputs": []}', {}, 400, "no inputs"),
    "input given twice": (
        json.dumps({"inputs": [_json_tensor(), _json_tensor()]}).encode(), {}, 400, "more than once"
    ),
    "routing_key not a string": (
        json.dumps({"inputs": [_json_tensor()], "parameters": {"routing_key": 5}}).encode(),
        {}, 400, "routing_key",
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", list(MORE_BAD_HTTP))
def test_malformed_http_requests_are_rejected_clearly(server: Served, case: str) -> None:
    body, headers, status, expected = MORE_BAD_HTTP[case]
    got, payload, _ = post(server, "/v2/models/multi/infer", body, headers)
    assert got == status, payload
    assert expected in json.loads(payload)["error"]


@pytest.mark.parametrize(
    ("path", "status", "expected"),
    [
        ("/v2/models/nope/infer", 404, "nope"),
        ("/v2/models/multi/versions/9/infer", 404, "multi"),
        ("/v2/models/multi/versions/x1/infer", 400, "Invalid version"),
    ],
)
def test_unknown_model_or_version(server: Served, path: str, status: int, expected: str) -> None:
    body = json.dumps({"inputs": [_json_tensor()]}).encode()
    got, payload, _ = post(server, path, body)
    assert got == status, payload
    assert expected in json.loads(payload)["error"]


def _raw_request(
    name: str, datatype: str, shape: list[int], raw: bytes
) -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name="multi")
    request.inputs.add(name=name, datatype=datatype, shape=shape)
    request.raw_input_contents.append(raw)
    return request


def _typed_request(datatype: str, shape: list[int], values: list[float]) -> object:
    request = service_pb2.ModelInferRequest(model_name="multi")
    tensor = request.inputs.add(name="x", datatype=datatype, shape=shape)
    tensor.contents.fp32_contents.extend(values)
    return request


BAD_GRPC = {
    "unknown datatype": (_typed_request("FP8", [1, 4], [1, 2, 3, 4]), "FP8"),
    "shape/data mismatch": (_typed_request("FP32", [2, 4], [1, 2, 3, 4]), "expected 8 values"),
    "raw wrong byte count": (_raw_request("x", "FP32", [1, 4], b"\0" * 12), "x"),
    "BYTES bad length prefix": (
        _raw_request("names", "BYTES", [1], struct.pack("<I", 50) + b"ab"),
        "names",
    ),
}


@pytest.mark.parametrize("case", list(BAD_GRPC))
def test_bad_grpc_input_is_invalid_argument_and_server_keeps_serving(
    server: Served, grpc_client: tgrpc.InferenceServerClient, case: str
) -> None:
    request, expected = BAD_GRPC[case]
    with grpc.insecure_channel(server.grpc) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            stub.ModelInfer(request)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert expected in caught.value.details()
    print(f"{case}: INVALID_ARGUMENT {caught.value.details()}")
    check_multi(grpc_client.infer("multi", grpc_inputs()))


# -- A/B split ------------------------------------------------------------------------------


def _ab_request(i: int, routing_key: str | None = None) -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name="ab", id=str(i))
    request.inputs.add(name="x", datatype="FP32", shape=[1, 64])
    request.raw_input_contents.append(np.full((1, 64), i % 7, np.float32).tobytes())
    if routing_key is not None:
        request.parameters["routing_key"].string_param = routing_key
    return request


async def _stream_versions(address: str, requests: list[object]) -> list[str]:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        versions = []
        async for answer in stub.ModelStreamInfer(iter(requests)):
            assert not answer.error_message, answer.error_message
            versions.append(answer.infer_response.model_version)
        return versions


def test_ab_split_90_10_over_10000_unversioned_requests(server: Served) -> None:
    before = scrape(server)
    count = 10_000
    versions = asyncio.run(_stream_versions(server.grpc, [_ab_request(i) for i in range(count)]))
    tally = Counter(versions)
    share = tally["1"] / count * 100
    print(f"A/B over {count} requests: {dict(tally)} → stable {share:.2f}%")
    assert set(tally) == {"1", "2"} and 88 <= share <= 92
    after = scrape(server)
    for version, seen in tally.items():
        counted = metric(
            after, "streamserve_requests_total", model="ab", version=version, status="OK"
        ) - metric(before, "streamserve_requests_total", model="ab", version=version, status="OK")
        assert counted == seen, (version, counted, seen)


def test_ab_sticky_routing_keys(server: Served, http: thttp.InferenceServerClient) -> None:
    keys = [f"user-{i}" for i in range(200)]
    requests = [_ab_request(i, key) for i in range(3) for key in keys]
    versions = asyncio.run(_stream_versions(server.grpc, requests))
    by_key: dict[str, set[str]] = {}
    for request, version in zip(requests, versions, strict=True):
        by_key.setdefault(request.parameters["routing_key"].string_param, set()).add(version)
    assert all(len(seen) == 1 for seen in by_key.values())
    arms = Counter(next(iter(seen)) for seen in by_key.values())
    assert set(arms) == {"1", "2"}
    # The same key picks the same arm over REST (header or parameters) and gRPC metadata.
    x = thttp.InferInput("x", [1, 64], "FP32")
    x.set_data_from_numpy(np.ones((1, 64), np.float32))
    for key in keys[:20]:
        expected = next(iter(by_key[key]))
        result = http.infer("ab", [x], headers={"x-routing-key": key})
        assert result.get_response()["model_version"] == expected
        result = http.infer("ab", [x], parameters={"routing_key": key})
        assert result.get_response()["model_version"] == expected
        over_grpc = tgrpc.InferenceServerClient(server.grpc).infer(
            "ab", [_grpc_ones()], headers={"x-routing-key": key}
        )
        assert over_grpc.get_response().model_version == expected


def _grpc_ones() -> tgrpc.InferInput:
    x = tgrpc.InferInput("x", [1, 64], "FP32")
    x.set_data_from_numpy(np.ones((1, 64), np.float32))
    return x


# -- batching and metrics --------------------------------------------------------------------


async def _concurrent_single_rows(address: str, count: int) -> list[object]:
    client = tgrpc_aio.InferenceServerClient(address)
    try:
        calls = []
        for i in range(count):
            inputs = []
            x = np.full((1, 4), i, np.float32)
            ids = np.full((1, 2), i, np.int64)
            names = np.array([f"caller-{i}".encode()], dtype=object)
            for name, array, datatype in (("x", x, "FP32"), ("ids", ids, "INT64"),
                                          ("names", names, "BYTES")):  # fmt: skip
                tensor = tgrpc_aio.InferInput(name, [1, *array.shape[1:]], datatype)
                tensor.set_data_from_numpy(array)
                inputs.append(tensor)
            calls.append(client.infer("batched", inputs))
        return await asyncio.gather(*calls)
    finally:
        await client.close()


def test_dynamic_batching_through_the_server(server: Served) -> None:
    before = scrape(server)
    results = asyncio.run(_concurrent_single_rows(server.grpc, 64))
    after = scrape(server)
    for i, result in enumerate(results):
        assert result.as_numpy("y").tolist() == [[2.0 * i] * 4]  # type: ignore[attr-defined]
        assert result.as_numpy("ids_out").tolist() == [[i + 1, i + 1]]  # type: ignore[attr-defined]
        assert result.as_numpy("names_out").tolist() == [f"caller-{i}".encode()]  # type: ignore[attr-defined]
    calls = metric(after, "streamserve_batch_size_count", model="batched") - metric(
        before, "streamserve_batch_size_count", model="batched"
    )
    rows = metric(after, "streamserve_batch_size_sum", model="batched") - metric(
        before, "streamserve_batch_size_sum", model="batched"
    )
    print(f"64 concurrent single-row requests → {calls:.0f} runtime calls, {rows:.0f} rows")
    assert rows == 64 and calls <= 4


def test_prometheus_metrics_after_traffic(
    server: Served, http: thttp.InferenceServerClient, grpc_client: tgrpc.InferenceServerClient
) -> None:
    http.infer("multi", http_inputs(True))
    grpc_client.infer("multi", grpc_inputs())
    grpc_client.unload_model("batched")
    grpc_client.load_model("batched")  # a load observed by the load-latency histogram
    for path in ("/monitoring/prometheus/metrics", "/metrics"):
        samples = scrape(server, path)
        assert metric(samples, "streamserve_requests_total", protocol="v2", api="infer") > 0
        assert metric(samples, "streamserve_request_latency_seconds_count", model="multi") > 0
        assert metric(samples, "streamserve_request_latency_seconds_sum", model="multi") > 0
        assert metric(samples, "streamserve_batch_size_count", model="multi") > 0
        assert metric(samples, "streamserve_model_version_state", model="ab", version="2") == 30
        assert metric(samples, "streamserve_model_load_seconds_count", model="batched") > 0
        assert ("streamserve_batch_queue_rows", (("model", "multi"), ("version", "1"))) in samples
        assert metric(samples, "streamserve_process_cpu_seconds_total") > 0
    bad = _typed_request("FP8", [1, 4], [1, 2, 3, 4])
    with grpc.insecure_channel(server.grpc) as channel, pytest.raises(grpc.RpcError):
        service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(bad)
    samples = scrape(server)
    assert metric(samples, "streamserve_requests_total", status="INVALID_ARGUMENT") > 0
