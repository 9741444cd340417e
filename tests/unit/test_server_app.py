"""The Python API: Server/ServerOptions start and stop in-process, sync and async."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from streamserve.errors import SetupError
from streamserve.models.toy import build_tiny
from streamserve.repository import ModelConfig, ModelManager
from streamserve.runtimes.base import Signature, TensorSpec
from streamserve.server import Server, ServerOptions, app
from streamserve.server.batching import BatchingRunner
from streamserve.server.context import DEFAULT_ADAPTERS
from streamserve.server.http import Request, Response, json_response
from streamserve.waiting import wait_until

NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("app") / "tiny"
    build_tiny(base / "1", width=4)
    return base


def options(model_dir: Path, **kwargs: object) -> ServerOptions:
    defaults: dict[str, object] = {
        "model_name": "tiny",
        "model_base_path": model_dir,
        "host": "127.0.0.1",
        "file_system_poll_wait_seconds": 0,
    }
    return ServerOptions(**{**defaults, **kwargs})  # type: ignore[arg-type]


def predict(rest_port: int) -> httpx.Response:
    body = {"instances": [[0.5, -1.0, 2.0, 0.0]]}
    return httpx.post(f"http://127.0.0.1:{rest_port}/v1/models/tiny:predict", json=body)


def health_status(grpc_port: int) -> int:
    with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        response = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
        return int(response.status)


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def test_sync_start_picks_free_ports_and_stop_releases_them(model_dir: Path) -> None:
    with Server(options(model_dir)) as server:
        assert server.grpc_port > 0 and server.rest_port
        response = predict(server.rest_port)
        assert response.status_code == 200 and len(response.json()["predictions"][0]) == 4
        with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
            grpc.channel_ready_future(channel).result(timeout=10)
        ports = (server.grpc_port, server.rest_port)
    assert all(port_is_free(port) for port in ports)


def test_async_context_manager_and_models_list(model_dir: Path) -> None:
    async def scenario() -> int:
        configs = [ModelConfig("tiny", model_dir)]
        async with Server(options(model_dir, models=configs)) as server:
            assert server.rest_port is not None
            async with httpx.AsyncClient() as client:
                url = f"http://127.0.0.1:{server.rest_port}/v1/models/tiny"
                return (await client.get(url)).status_code

    assert asyncio.run(scenario()) == 200


def test_rest_off(model_dir: Path) -> None:
    with Server(options(model_dir, rest_port=None)) as server:
        assert server.rest_port is None and server.grpc_port > 0


def test_busy_port_is_a_setup_error_and_nothing_leaks(model_dir: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(SetupError, match=str(port)):
            Server(options(model_dir, rest_port=port)).start()


def test_adapters_can_add_routes(model_dir: Path) -> None:
    async def hello(request: Request) -> Response:
        return json_response({"hello": request.path_params["who"]})

    server = Server(options(model_dir))
    server.start()
    try:
        assert server.context is not None and server.context.rest_app is not None
        server.context.rest_app.add_route("GET", "/hello/{who}", hello)
        response = httpx.get(f"http://127.0.0.1:{server.rest_port}/hello/you")
        assert response.json() == {"hello": "you"}
    finally:
        server.stop()


class GateRunner:
    """Holds every model call until ``gate`` is set (a request 'in flight')."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.gate = threading.Event()

    async def run(
        self, handle: object, signature_name: str, inputs: dict, output_filter: Sequence[str]
    ) -> dict:
        self.entered.set()
        await asyncio.to_thread(self.gate.wait, 30)
        return {"y": inputs["x"]}

    def close(self) -> None:
        pass


def test_stop_lets_requests_in_flight_finish(model_dir: Path) -> None:
    runner = GateRunner()
    server = Server(options(model_dir), runner=runner).start()
    with ThreadPoolExecutor(2) as pool:
        in_flight = pool.submit(predict, server.rest_port or 0)
        assert runner.entered.wait(30)
        stopping = pool.submit(server.stop)
        wait_until(lambda: health_status(server.grpc_port) == NOT_SERVING, 30, "the stop to begin")
        assert not stopping.done()
        runner.gate.set()
        stopping.result(30)
        response = in_flight.result(30)
    assert response.status_code == 200
    assert response.json() == {"predictions": [[0.5, -1.0, 2.0, 0.0]]}


# -- adapter wiring and batching ---------------------------------------------------------


def test_a_configured_adapter_that_is_not_installed_stops_start_up(
    model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    without_metrics = {k: v for k, v in app.INSTALLED_ADAPTERS.items() if k != "metrics"}
    monkeypatch.setattr(app, "INSTALLED_ADAPTERS", without_metrics)
    with pytest.raises(SetupError, match=r"adapter.*'metrics' configured but not installed"):
        Server(options(model_dir)).start()


def test_an_adapter_that_fails_to_install_stops_start_up_naming_it(
    model_dir: Path, tmp_path: Path
) -> None:
    missing = tmp_path / "no-such-monitoring.config"
    with pytest.raises(SetupError, match="adapter 'metrics' failed to install: cannot read"):
        Server(options(model_dir, monitoring_config_file=missing)).start()


class RowCountingServable:
    """y = x; records the rows of every call (a merged batch shows as one call)."""

    def __init__(self) -> None:
        spec = TensorSpec("x", np.dtype(np.float32), (None, 2))
        self.signatures = {
            "serving_default": Signature("serving_default", {"x": spec}, {"y": spec})
        }
        self.rows: list[int] = []

    def predict(
        self, inputs: dict, signature_name: str = "", output_filter: Sequence[str] | None = None
    ) -> dict:
        self.rows.append(len(inputs["x"]))
        return {"y": np.asarray(inputs["x"])}

    def close(self) -> None:
        pass


def test_batching_forms_batches_with_metrics_disabled(tmp_path: Path) -> None:
    (tmp_path / "m" / "1").mkdir(parents=True)
    # a batch runs when full (4 rows); the long timeout makes the 4 requests meet
    (tmp_path / "batching.txt").write_text(
        "max_batch_size { value: 4 }\nbatch_timeout_micros { value: 30000000 }\n"
    )
    servable = RowCountingServable()
    manager = ModelManager(
        [ModelConfig("m", tmp_path / "m")],
        file_system_poll_wait_seconds=0,
        loader=lambda version_dir: servable,
        warmup=False,
    )
    manager.start()
    no_metrics = tuple(name for name in DEFAULT_ADAPTERS if name != "metrics")
    server_options = ServerOptions(
        host="127.0.0.1",
        adapters=no_metrics,
        enable_batching=True,
        batching_parameters_file=tmp_path / "batching.txt",
    )
    body = {"instances": [[1.0, 2.0]]}
    try:
        with Server(server_options, manager=manager) as server:
            assert server.context is not None and server.context.metrics is None
            assert isinstance(server.context.core.runner, BatchingRunner)
            url = f"http://127.0.0.1:{server.rest_port}/v1/models/m:predict"
            with ThreadPoolExecutor(4) as pool:
                replies = list(pool.map(lambda _: httpx.post(url, json=body, timeout=30), range(4)))
            metrics_page = httpx.get(f"http://127.0.0.1:{server.rest_port}/metrics")
    finally:
        manager.stop()
    assert [reply.json() for reply in replies] == [{"predictions": [[1.0, 2.0]]}] * 4
    assert servable.rows == [4]
    assert metrics_page.status_code == 404
