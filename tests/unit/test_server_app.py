"""The Python API: Server/ServerOptions start and stop in-process, sync and async."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import httpx
import pytest

from streamserve.errors import SetupError
from streamserve.models.toy import build_tiny
from streamserve.repository import ModelConfig
from streamserve.server import Server, ServerOptions
from streamserve.server.http import Request, Response, json_response

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
        time.sleep(0.2)  # let the stop begin while the call is held
        assert not stopping.done()
        runner.gate.set()
        stopping.result(30)
        response = in_flight.result(30)
    assert response.status_code == 200
    assert response.json() == {"predictions": [[0.5, -1.0, 2.0, 0.0]]}
