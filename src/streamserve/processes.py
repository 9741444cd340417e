"""Child processes of streamserve's own commands, for the demo, benchmarks and tests.

:class:`ModelServerProcess` runs ``streamserve serve`` on free ports and waits for
its readiness line and for the model to answer (never a sleep); stopping sends
SIGTERM, then SIGKILL after a deadline, so nothing is left behind.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

SERVER_READY_PREFIX = "streamserve: serving gRPC on "


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def restartable_port(host: str = "0.0.0.0") -> int:
    """A free port below the OS's ephemeral range, for a server restarted in place.

    A port from :func:`free_port` lies in the ephemeral range, so while its server is down
    any outgoing connection on the machine may be given it and the restart fails.
    """
    low = _ephemeral_range_start()
    for _ in range(200):
        port = random.randrange(10_000, low)
        with socket.socket() as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return port
    return free_port(host)


def _ephemeral_range_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


class ModelServerProcess:
    """``streamserve serve FLAGS`` on 127.0.0.1 with a free gRPC and REST port."""

    def __init__(
        self,
        flags: Sequence[str],
        log_path: Path,
        grpc_port: int = 0,
        rest_port: int = 0,
        env: dict[str, str] | None = None,
    ) -> None:
        self.grpc_port = grpc_port or free_port()
        self.rest_port = rest_port or free_port()
        self.flags = [
            "--host=127.0.0.1",
            f"--port={self.grpc_port}",
            f"--rest_api_port={self.rest_port}",
            *flags,
        ]
        self.log_path = Path(log_path)
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.process: subprocess.Popen[str] | None = None
        self._ready = threading.Event()
        self._reader: threading.Thread | None = None

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def rest_url(self) -> str:
        return f"http://127.0.0.1:{self.rest_port}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> ModelServerProcess:
        self._ready.clear()
        log = self.log_path.open("a")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "streamserve", "serve", *self.flags],
            stdout=subprocess.PIPE,
            stderr=log,
            env=self.env,
            text=True,
        )
        log.close()
        self._reader = threading.Thread(target=self._watch_stdout, daemon=True)
        self._reader.start()
        return self

    def _watch_stdout(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for line in self.process.stdout:
            if line.startswith(SERVER_READY_PREFIX):
                self._ready.set()

    def wait_ready(self, model: str | None = None, timeout: float = 120.0) -> ModelServerProcess:
        """Wait for the readiness line, then until ``model`` answers its status request."""
        deadline = time.monotonic() + timeout
        while not self._ready.wait(0.05):
            self._check_alive()
            if time.monotonic() > deadline:
                raise TimeoutError(f"model server not ready in time:\n{self.log_tail()}")
        while model is not None and not self._model_available(model):
            self._check_alive()
            if time.monotonic() > deadline:
                raise TimeoutError(f"model {model!r} not available in time:\n{self.log_tail()}")
            time.sleep(0.05)
        return self

    def _model_available(self, model: str) -> bool:
        import httpx

        with contextlib.suppress(httpx.HTTPError):
            reply = httpx.get(f"{self.rest_url}/v1/models/{model}", timeout=5)
            states = [s.get("state") for s in reply.json().get("model_version_status", [])]
            return reply.status_code == 200 and "AVAILABLE" in states
        return False

    def _check_alive(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(
                f"model server exited with {self.process.returncode}:\n{self.log_tail()}"
            )

    def kill(self) -> None:
        """SIGKILL, as an outage would."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM, then SIGKILL if it has not exited by ``timeout``."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        if self._reader is not None:
            self._reader.join(5)
        return self.process.returncode

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def __enter__(self) -> ModelServerProcess:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
