"""Child processes of ``python -m benchmarks stream``: the model server and processor workers.

Both are started with the running interpreter (``python -m ...``), announce readiness with
one stdout line (waited for with a deadline, never a sleep), log to a file in the output
folder, and are stopped with SIGTERM (SIGKILL after a deadline). :func:`cpu_seconds`
reads a process's user+system CPU time from ``/proc`` (all its threads).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

from benchmarks.common import process_tree_cpu_seconds
from benchmarks.stream_worker import READY_PREFIX, WorkerSpec
from streamserve.processes import restartable_port

SERVER_READY_PREFIX = "streamserve: serving gRPC on "


def cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU seconds used so far by ``pid`` and its children (``None`` if
    unknown or gone)."""
    if pid is None or not Path(f"/proc/{pid}").exists():
        return None
    return process_tree_cpu_seconds(pid)


class _Child:
    """A child process whose stdout is scanned for a readiness line and copied to a log."""

    ready_prefix = ""

    def __init__(self, command: list[str], log_path: Path) -> None:
        self.command = command
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None
        self.ready_line = ""
        self._ready = threading.Event()
        self._reader: threading.Thread | None = None

    @property
    def name(self) -> str:
        return " ".join(self.command[2:4])

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def start(self) -> None:
        self._ready.clear()
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        log: IO[bytes] = self.log_path.open("ab")
        self.process = subprocess.Popen(
            self.command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env
        )
        self._reader = threading.Thread(target=self._pump, args=(self.process, log), daemon=True)
        self._reader.start()

    def _pump(self, process: subprocess.Popen[bytes], log: IO[bytes]) -> None:
        assert process.stdout is not None
        with log:
            for line in process.stdout:
                log.write(line)
                log.flush()
                text = line.decode("utf-8", "replace").strip()
                if text.startswith(self.ready_prefix) and not self._ready.is_set():
                    self.ready_line = text
                    self._ready.set()

    def wait_ready(self, timeout: float = 120.0) -> str:
        deadline = time.monotonic() + timeout
        while not self._ready.wait(0.05):
            if self.process is None or self.process.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited early; log {self.log_path}:\n" + self.log_tail()
                )
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{self.name} not ready in {timeout:.0f} s; "
                    f"log {self.log_path}:\n" + self.log_tail()
                )
        return self.ready_line

    def kill(self) -> None:
        """SIGKILL (a crash, as far as everyone else can tell)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(30)
        self._join()

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout``; the exit code (``None`` if never started)."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(30)
        self._join()
        return self.process.returncode

    def _join(self) -> None:
        if self._reader is not None:
            self._reader.join(5)

    def log_tail(self, lines: int = 40) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""


class ServerProcess(_Child):
    """``streamserve serve`` for one model on fixed local ports (so a restart reuses them)."""

    ready_prefix = SERVER_READY_PREFIX

    def __init__(self, model_name: str, base_path: Path, log_path: Path) -> None:
        self.grpc_port = restartable_port()  # restarted in place after an outage
        self.rest_port = restartable_port()
        super().__init__(
            [
                sys.executable,
                "-m",
                "streamserve",
                "serve",
                "--host=127.0.0.1",
                f"--port={self.grpc_port}",
                f"--rest_api_port={self.rest_port}",
                f"--model_name={model_name}",
                f"--model_base_path={base_path}",
            ],
            log_path,
        )
        self.model_name = model_name

    @property
    def grpc_target(self) -> str:
        return f"grpc://127.0.0.1:{self.grpc_port}"

    @property
    def rest_target(self) -> str:
        return f"http://127.0.0.1:{self.rest_port}"

    def start_and_wait(self, timeout: float = 120.0) -> ServerProcess:
        self.start()
        self.wait_ready(timeout)
        self._wait_model_available(time.monotonic() + timeout)
        return self

    def _wait_model_available(self, deadline: float) -> None:
        import httpx

        url = f"{self.rest_target}/v1/models/{self.model_name}"
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url, timeout=5).status_code == 200:
                    return
            if time.monotonic() > deadline:
                raise TimeoutError(f"model {self.model_name} not available:\n{self.log_tail()}")
            time.sleep(0.05)


class WorkerProcess(_Child):
    """``python -m benchmarks.stream_worker SPEC`` (one :class:`StreamProcessor`)."""

    ready_prefix = READY_PREFIX

    def __init__(self, spec: WorkerSpec, spec_path: Path, log_path: Path) -> None:
        spec.save(spec_path)
        super().__init__(
            [sys.executable, "-m", "benchmarks.stream_worker", str(spec_path)], log_path
        )
        self.spec = spec
        self.metrics_port: int | None = None

    def wait_ready(self, timeout: float = 120.0) -> str:
        line = super().wait_ready(timeout)
        value = line.rpartition("metrics_port=")[2].split()[0]
        self.metrics_port = int(value) if value.isdigit() else None
        return line

    def metrics_text(self, timeout: float = 2.0) -> str:
        import httpx

        if self.metrics_port is None:
            return ""
        with contextlib.suppress(httpx.HTTPError):
            return httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=timeout).text
        return ""

    def calls(self) -> dict[str, list[Any]]:
        """Timed model calls by predictor mode, written by the worker when it exits."""
        path = Path(self.spec.calls_path)
        if not path.exists():
            return {}
        return dict(json.loads(path.read_text()))
