"""Child processes, one way: for the demo, the benchmarks, the tests and ``streamserve.testing``.

:class:`ChildProcess` starts a command in its own process group, copies its stdout and
stderr to a log file, detects readiness by the first stdout line that starts with its
``ready_prefix`` (waited for with a deadline, never a sleep), and stops it with SIGTERM,
then SIGKILL after a deadline, so nothing is left behind. Failures carry the log's tail.

:class:`ModelServerProcess` (``streamserve serve``) and :class:`StreamProcess`
(``streamserve stream``) are thin subclasses; the readiness lines are the ones those
commands print (:data:`SERVER_READY_PREFIX`, :data:`STREAM_READY_PREFIX`).
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
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Self

from streamserve.server.cli import SERVER_READY_PREFIX
from streamserve.stream.cli import STREAM_READY_PREFIX
from streamserve.waiting import wait_until

__all__ = [
    "SERVER_READY_PREFIX",
    "STREAM_READY_PREFIX",
    "ChildProcess",
    "ModelServerProcess",
    "StreamProcess",
    "free_port",
    "log_tail",
    "metric_value",
    "model_server",
    "restartable_port",
    "signal_group",
]

LOCALHOST = "127.0.0.1"


def free_port(host: str = LOCALHOST) -> int:
    """A port the OS says is free now (the child binds it moments later)."""
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


def signal_group(pid: int, signum: int) -> None:
    """Send ``signum`` to the process group led by ``pid`` (to ``pid`` alone if not allowed)."""
    try:
        os.killpg(pid, signum)
    except ProcessLookupError:
        pass
    except PermissionError:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)


def log_tail(path: Path, lines: int = 40) -> str:
    """The last ``lines`` lines of a text file ('' when it cannot be read)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - 400 * lines))
            data = handle.read()
    except OSError:
        return ""
    return "\n".join(data.decode(errors="replace").splitlines()[-lines:])


class ChildProcess:
    """``command`` in its own process group; stdout+stderr appended to ``log_path``.

    Ready when a stdout line starts with ``ready_prefix`` (that line is ``ready_line``);
    an empty prefix means ready once started. The child's environment is ``base_env``
    (default: this process's) updated with ``env``. ``echo``: a stream that gets every
    output line too (e.g. this process's stderr).
    """

    ready_prefix = ""

    def __init__(
        self,
        command: Sequence[str],
        log_path: Path,
        *,
        ready_prefix: str | None = None,
        env: Mapping[str, str] | None = None,
        base_env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        name: str | None = None,
        echo: IO[bytes] | None = None,
    ) -> None:
        self.command = list(command)
        self.log_path = Path(log_path)
        self.echo = echo
        if ready_prefix is not None:
            self.ready_prefix = ready_prefix
        inherited = os.environ if base_env is None else base_env
        self.env = {**inherited, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.cwd = cwd
        self.name = name or " ".join(Path(part).name for part in self.command[:4])
        self.process: subprocess.Popen[bytes] | None = None
        self.ready_line = ""
        self._ready = threading.Event()
        self._reader: threading.Thread | None = None

    @property
    def pid(self) -> int:
        return self._started().pid

    @property
    def returncode(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> Self:
        self._ready.clear()
        self.ready_line = ""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            self.command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=self.env,
            cwd=self.cwd,
            start_new_session=True,  # own process group: stopping it stops its children too
        )
        self._reader = threading.Thread(target=self._copy_output, args=(log,), daemon=True)
        self._reader.start()
        if not self.ready_prefix:
            self._ready.set()
        return self

    def _copy_output(self, log: IO[bytes]) -> None:
        stdout = self._started().stdout
        assert stdout is not None
        with log:
            for raw in stdout:
                log.write(raw)
                log.flush()
                if self.echo is not None:
                    self._echo(raw)
                if not self._ready.is_set():
                    self._check_ready_line(raw.decode("utf-8", "replace").strip())

    def _echo(self, raw: bytes) -> None:
        assert self.echo is not None
        with contextlib.suppress(OSError, ValueError):  # a closed stream must not stop the copy
            self.echo.write(raw)
            self.echo.flush()

    def _check_ready_line(self, line: str) -> None:
        if line.startswith(self.ready_prefix):
            self.ready_line = line
            self.on_ready(line)
            self._ready.set()

    def on_ready(self, line: str) -> None:
        """Hook for subclasses: read addresses or ports from the readiness line."""

    def wait_ready(self, timeout: float = 120.0) -> Self:
        """Wait for the readiness line (then in ``ready_line``); raise, with the log's tail,
        if the child exits first or ``timeout`` passes."""
        wait_until(self._is_ready, timeout, f"{self.name} ready", describe=self.failure_context)
        return self

    def _is_ready(self) -> bool:
        if self._ready.is_set():
            return True
        if self.running():
            return False
        if self._reader is not None:
            self._reader.join(5)  # a readiness line printed just before exiting still counts
        if not self._ready.is_set():
            self.raise_if_exited()
        return self._ready.is_set()

    def raise_if_exited(self) -> None:
        """RuntimeError, with the log's tail, once the child has exited."""
        process = self._started()
        if process.poll() is not None:
            raise RuntimeError(f"{self.name} exited with {process.returncode}; "
                               f"{self.failure_context()}")  # fmt: skip

    def failure_context(self) -> str:
        return f"log {self.log_path}:\n{self.log_tail()}"

    def send_signal(self, signum: int) -> None:
        """``signum`` to the child's process group, if it is still running."""
        if self.running():
            signal_group(self.pid, signum)

    def wait(self, timeout: float) -> int:
        """Wait for exit (``subprocess.TimeoutExpired`` after ``timeout``); the exit code."""
        code = self._started().wait(timeout)
        if self._reader is not None:
            self._reader.join(5)
        return code

    def kill(self) -> None:
        """SIGKILL (a crash, as far as everyone else can tell)."""
        if self.process is None:
            return
        self.send_signal(signal.SIGKILL)
        self.wait(30)

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout``; the exit code (``None`` if never started)."""
        if self.process is None:
            return None
        self.send_signal(signal.SIGTERM)
        try:
            return self.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return self.process.returncode

    def log_tail(self, lines: int = 40) -> str:
        return log_tail(self.log_path, lines)

    def log_text(self) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")
        return ""

    def _started(self) -> subprocess.Popen[bytes]:
        if self.process is None:
            raise RuntimeError(f"{self.name} was not started")
        return self.process

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def streamserve_command(*args: str) -> list[str]:
    """``python -m streamserve ARGS`` with the running interpreter."""
    return [sys.executable, "-m", "streamserve", *args]


class ModelServerProcess(ChildProcess):
    """``streamserve serve FLAGS`` on 127.0.0.1.

    ``grpc_port=0`` lets the server choose (read from its readiness line); ``rest_port=0``
    picks a free one. ``restartable=True`` picks both below the ephemeral range, so the
    server can be killed and restarted on the same ports.
    """

    ready_prefix = SERVER_READY_PREFIX

    def __init__(
        self,
        flags: Sequence[str],
        log_path: Path,
        *,
        grpc_port: int = 0,
        rest_port: int = 0,
        restartable: bool = False,
        global_flags: Sequence[str] = (),
        env: dict[str, str] | None = None,
    ) -> None:
        pick = restartable_port if restartable else free_port
        self.grpc_port = grpc_port or (pick() if restartable else 0)
        self.rest_port = rest_port or pick()
        command = streamserve_command(
            *global_flags,
            "serve",
            f"--host={LOCALHOST}",
            f"--port={self.grpc_port}",
            f"--rest_api_port={self.rest_port}",
            *flags,
        )
        super().__init__(command, log_path, env=env, name="streamserve serve")

    @property
    def grpc_target(self) -> str:
        """``127.0.0.1:PORT`` (a gRPC channel target)."""
        return f"{LOCALHOST}:{self.grpc_port}"

    @property
    def grpc_url(self) -> str:
        """``grpc://127.0.0.1:PORT`` (what ``streamserve stream --model-server`` takes)."""
        return f"grpc://{self.grpc_target}"

    @property
    def rest_url(self) -> str:
        return f"http://{LOCALHOST}:{self.rest_port}"

    def on_ready(self, line: str) -> None:
        """``...gRPC on HOST:PORT, REST on HOST:PORT`` (or ``REST off``): the bound ports."""
        grpc_address, _, rest = line[len(self.ready_prefix) :].partition(", ")
        self.grpc_port = _port_of(grpc_address)
        if rest.startswith("REST on "):
            self.rest_port = _port_of(rest)

    def wait_ready(self, timeout: float = 120.0, model: str | None = None) -> Self:
        """Wait for the readiness line, then (if given) until ``model`` is AVAILABLE."""
        super().wait_ready(timeout)
        if model is not None:
            wait_until(
                lambda: self.model_available(model) or self.raise_if_exited(),
                timeout,
                f"model {model!r} available",
                describe=self.failure_context,
            )
        return self

    def model_available(self, model: str) -> bool:
        """Whether the TF Serving status of ``model`` lists an AVAILABLE version."""
        import httpx

        with contextlib.suppress(httpx.HTTPError, ValueError):
            reply = httpx.get(f"{self.rest_url}/v1/models/{model}", timeout=5)
            states = [s.get("state") for s in reply.json().get("model_version_status", [])]
            return reply.status_code == 200 and "AVAILABLE" in states
        return False


def _port_of(address: str) -> int:
    return int(address.rsplit(":", 1)[1].split()[0])


def model_server(
    model_name: str, base_path: Path, log_path: Path, *, restartable: bool = False
) -> ModelServerProcess:
    """A :class:`ModelServerProcess` (not started) serving one model from ``base_path``."""
    flags = [f"--model_name={model_name}", f"--model_base_path={base_path}"]
    return ModelServerProcess(flags, log_path, restartable=restartable)


class StreamProcess(ChildProcess):
    """``streamserve stream ARGS``; ``ready_info`` holds the ``key=value`` fields of its
    readiness line (e.g. ``metrics_port``)."""

    ready_prefix = STREAM_READY_PREFIX

    def __init__(
        self, args: Sequence[str], log_path: Path, env: dict[str, str] | None = None
    ) -> None:
        super().__init__(
            streamserve_command("stream", *args), log_path, env=env, name="streamserve stream"
        )
        self.ready_info: dict[str, str] = {}

    def on_ready(self, line: str) -> None:
        fields = line[len(self.ready_prefix) :].split()
        self.ready_info = dict(field.split("=", 1) for field in fields if "=" in field)

    @property
    def metrics_port(self) -> int:
        return int(self.ready_info["metrics_port"])

    def metrics_text(self, timeout: float = 5.0) -> str:
        import httpx

        return httpx.get(f"http://{LOCALHOST}:{self.metrics_port}/metrics", timeout=timeout).text

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float:
        """Sum of the samples of ``name`` whose labels include ``labels``."""
        return metric_value(self.metrics_text(), name, labels)


def metric_value(text: str, name: str, labels: dict[str, str] | None = None) -> float:
    """Sum of the samples of ``name`` in Prometheus text whose labels include ``labels``."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name):
            continue
        series, _, value = line.rpartition(" ")
        metric, _, label_text = series.partition("{")
        if metric == name and _labels_match(label_text.rstrip("}"), labels or {}):
            total += float(value)
    return total


def _labels_match(label_text: str, wanted: dict[str, str]) -> bool:
    pairs = (part.split("=", 1) for part in label_text.split(",") if "=" in part)
    found = {key: value.strip('"') for key, value in pairs}
    return all(found.get(key) == value for key, value in wanted.items())
