"""Real ``streamserve serve`` processes for integration tests.

- ``ServerProcess``: starts the CLI as a subprocess on free ports, waits for its readiness
  line and then polls the REST status endpoint with a deadline (never sleeps for
  readiness), and stops it with SIGTERM (SIGKILL after a deadline).
- ``serve_process`` (function fixture) and ``serve_process_module`` (module fixture):
  ``start(*flags) -> ServerProcess``; every process started is stopped at teardown.
- ``tfserving_server`` (module fixture): one server with the toy ``multi`` model as ``m``.

Server processes run with a ``tensorflow`` package on their path that refuses to import,
which proves the server never needs TensorFlow.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from streamserve.processes import free_port

READY_PREFIX = "streamserve: serving gRPC on "
START_DEADLINE_SECONDS = 60.0
STOP_DEADLINE_SECONDS = 30.0


def no_tensorflow_path(root: Path) -> Path:
    """A directory whose ``tensorflow`` package raises ImportError when imported."""
    package = root / "no_tensorflow" / "tensorflow"
    package.mkdir(parents=True, exist_ok=True)
    (package / "__init__.py").write_text(
        "raise ImportError('streamserve serve must not import tensorflow')\n"
    )
    return package.parent


class ServerProcess:
    """One ``streamserve serve`` subprocess on 127.0.0.1."""

    def __init__(self, flags: list[str], workdir: Path, env: dict[str, str] | None = None) -> None:
        self.rest_port = free_port()
        self.flags = ["--host=127.0.0.1", "--port=0", f"--rest_api_port={self.rest_port}", *flags]
        self.stderr_path = workdir / f"server-{self.rest_port}.log"
        self.lines: list[str] = []
        self.grpc_port = 0
        self._ready = threading.Event()
        child_env = {**os.environ, **(env or {})}
        child_env["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(no_tensorflow_path(workdir)), child_env.get("PYTHONPATH")])
        )
        child_env["PYTHONUNBUFFERED"] = "1"
        self._stderr = self.stderr_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "streamserve", "serve", *self.flags],
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            env=child_env,
            text=True,
        )
        self._reader = threading.Thread(target=self._read_stdout, daemon=True)
        self._reader.start()

    @property
    def rest_url(self) -> str:
        return f"http://127.0.0.1:{self.rest_port}"

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def _read_stdout(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))
            if line.startswith(READY_PREFIX):
                address = line[len(READY_PREFIX) :].split(",")[0]
                self.grpc_port = int(address.rsplit(":", 1)[1])
                self._ready.set()

    def wait_ready(self, model: str | None = None) -> ServerProcess:
        """Wait for the readiness line, then until ``model`` (if given) answers status."""
        deadline = time.monotonic() + START_DEADLINE_SECONDS
        while not self._ready.wait(0.05):
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"server exited with {self.process.returncode}:\n{self.stderr()}"
                )
            if time.monotonic() > deadline:
                raise TimeoutError(f"server not ready in time:\n{self.stderr()}")
        if model is not None:
            poll_until(lambda: self.status_code(model) == 200, deadline, self.stderr)
        return self

    def status_code(self, model: str) -> int:
        with contextlib.suppress(httpx.HTTPError):
            return httpx.get(f"{self.rest_url}/v1/models/{model}", timeout=5).status_code
        return 0

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_DEADLINE_SECONDS)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._reader.join(5)
        self._stderr.close()
        return int(self.process.returncode)


def poll_until(
    condition: Callable[[], bool],
    deadline: float,
    describe: Callable[[], str] = lambda: "",
    interval: float = 0.05,
) -> None:
    """Poll ``condition`` until true; raise TimeoutError (with ``describe()``) at ``deadline``."""
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met in time\n{describe()}")
        time.sleep(interval)


def _serve(workdir: Path) -> Iterator[Callable[..., ServerProcess]]:
    started: list[ServerProcess] = []

    def start(*flags: str, env: dict[str, str] | None = None) -> ServerProcess:
        server = ServerProcess(list(flags), workdir, env)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def serve_process(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """``start(*flags) -> ServerProcess`` (call ``.wait_ready(model)``); stopped after the test."""
    yield from _serve(tmp_path)


@pytest.fixture(scope="module")
def serve_process_module(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[..., ServerProcess]]:
    """Like ``serve_process``, for servers shared by a module's tests."""
    yield from _serve(tmp_path_factory.mktemp("servers"))


@pytest.fixture(scope="module")
def tfserving_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """``streamserve serve --model_name=m --model_base_path=<dir with 1/model.onnx>``."""
    from streamserve.models.toy import build_multi

    root = tmp_path_factory.mktemp("tfserving")
    build_multi(root / "m" / "1")
    server = ServerProcess(["--model_name=m", f"--model_base_path={root / 'm'}"], root)
    try:
        yield server.wait_ready("m")
    finally:
        server.stop()
