"""A full batching queue answers 429 (REST) / RESOURCE_EXHAUSTED (gRPC), then recovers.

The server runs in-process with a model whose ``predict`` blocks until the test opens
a gate, so the queue state is exact: one batch running, one waiting, the next refused.
"""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp
from tritonclient.utils import InferenceServerException

from streamserve.repository import ModelConfig, ModelManager
from streamserve.runtimes.base import Signature, TensorSpec
from streamserve.server.app import Server, ServerOptions
from streamserve.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

SPEC = TensorSpec("x", np.dtype(np.float32), (None, 2))


class GatedServable:
    """y = x, once the gate is open; counts the calls that started."""

    def __init__(self, gate: threading.Event) -> None:
        self.gate = gate
        self.started = threading.Semaphore(0)
        self.signatures = {
            "serving_default": Signature("serving_default", {"x": SPEC}, {"y": SPEC})
        }

    def predict(
        self,
        inputs: Mapping[str, np.ndarray],
        signature_name: str = "serving_default",
        output_filter: Sequence[str] | None = None,
    ) -> dict[str, np.ndarray]:
        self.started.release()
        assert self.gate.wait(30)
        return {"y": np.asarray(inputs["x"])}

    def close(self) -> None:
        pass


@pytest.fixture
def gated(tmp_path: Path) -> Iterator[tuple[Server, GatedServable, threading.Event]]:
    (tmp_path / "gated" / "1").mkdir(parents=True)
    (tmp_path / "batching.txt").write_text(
        "max_batch_size { value: 1 }\nbatch_timeout_micros { value: 0 }\n"
        "max_enqueued_batches { value: 1 }\nnum_batch_threads { value: 1 }\n"
    )
    gate = threading.Event()
    servable = GatedServable(gate)
    manager = ModelManager(
        [ModelConfig("gated", tmp_path / "gated")],
        file_system_poll_wait_seconds=0,
        loader=lambda version_dir: servable,
        warmup=False,
    )
    manager.start()
    options = ServerOptions(
        host="127.0.0.1",
        enable_batching=True,
        batching_parameters_file=tmp_path / "batching.txt",
    )
    server = Server(options, manager=manager).start()
    try:
        yield server, servable, gate
    finally:
        gate.set()
        server.stop()
        manager.stop()


def _infer(rest_port: int) -> list[list[float]]:
    client = thttp.InferenceServerClient(f"127.0.0.1:{rest_port}")
    x = thttp.InferInput("x", [1, 2], "FP32")
    x.set_data_from_numpy(np.ones((1, 2), np.float32))
    try:
        result = client.infer("gated", [x])
        assert result.get_response()["model_version"] == "1"
        return result.as_numpy("y").tolist()
    finally:
        client.close()


def _queued_rows(rest_port: int) -> float:
    url = f"http://127.0.0.1:{rest_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        for line in response.read().decode().splitlines():
            if line.startswith('streamserve_batch_queue_rows{model="gated"'):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_full_queue_is_429_and_resource_exhausted_then_recovers(
    gated: tuple[Server, GatedServable, threading.Event],
) -> None:
    server, servable, gate = gated
    rest_port = server.rest_port
    assert rest_port is not None
    with ThreadPoolExecutor(2) as pool:
        running: Future[list[list[float]]] = pool.submit(_infer, rest_port)
        assert servable.started.acquire(timeout=20)  # batch 1 holds the only worker
        waiting: Future[list[list[float]]] = pool.submit(_infer, rest_port)
        wait_until(lambda: _queued_rows(rest_port) == 1, 20, "the second request to queue")

        body = json.dumps(
            {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [1, 2]}]}
        ).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{rest_port}/v2/models/gated/infer", data=body, method="POST"
        )
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        assert refused.value.code == 429
        message = json.loads(refused.value.read())["error"]
        assert "queue is full" in message
        print(f"REST: 429 {message}")

        client = tgrpc.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
        x = tgrpc.InferInput("x", [1, 2], "FP32")
        x.set_data_from_numpy(np.ones((1, 2), np.float32))
        with pytest.raises(InferenceServerException) as exhausted:
            client.infer("gated", [x])
        assert exhausted.value.status() == str(grpc.StatusCode.RESOURCE_EXHAUSTED)
        print(f"gRPC: {exhausted.value.status()} {exhausted.value.message()}")

        gate.set()
        assert running.result(timeout=20) == [[1.0, 1.0]]
        assert waiting.result(timeout=20) == [[1.0, 1.0]]
    assert client.infer("gated", [x]).as_numpy("y").tolist() == [[1.0, 1.0]]
    client.close()
