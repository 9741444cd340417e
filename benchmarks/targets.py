"""Server processes the server benchmark measures: streamserve, MLServer, a minimal grpc.aio
V2 server. Each starts as a child process on free loopback ports, is polled for readiness
with a deadline, and is stopped (SIGTERM, then SIGKILL) when the benchmark ends."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from benchmarks import BENCHMARKS_DIR
from streamserve.errors import SetupError
from streamserve.processes import free_port

HOST = "127.0.0.1"
START_TIMEOUT_SECONDS = 180.0
_STREAMSERVE_READY = re.compile(r"streamserve: serving gRPC on [^:]+:(\d+), REST on [^:]+:(\d+)")
_MINIMAL_READY = re.compile(r"minimal-grpc: listening on [^:]+:(\d+)")


@dataclass
class ServerProcess:
    """A running server: where to reach it and which pid to read CPU time from."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    grpc_port: int | None = None
    rest_port: int | None = None
    _log: IO[bytes] | None = field(default=None, repr=False)

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def grpc_address(self) -> str:
        return f"{HOST}:{self.grpc_port}"

    @property
    def rest_url(self) -> str:
        return f"http://{HOST}:{self.rest_port}"

    def stop(self, timeout: float = 15.0) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout)
        if self._log is not None:
            self._log.close()
            self._log = None


def _spawn(
    name: str,
    command: list[str],
    log_dir: Path,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
) -> ServerProcess:
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    log = log_path.open("wb")
    process = subprocess.Popen(
        command, stdout=log, stderr=subprocess.STDOUT, cwd=cwd, env=env, start_new_session=True
    )
    return ServerProcess(name, process, log_path, _log=log)


def _wait_for(server: ServerProcess, ready: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while not ready():
        if server.process.poll() is not None:
            raise SetupError(f"{server.name} exited during start-up; see {server.log_path}:\n"
                             f"{_tail(server.log_path)}")  # fmt: skip
        if time.monotonic() > deadline:
            server.stop()
            raise SetupError(f"{server.name} not {what} after {START_TIMEOUT_SECONDS:.0f}s; "
                             f"see {server.log_path}")  # fmt: skip
        time.sleep(0.1)


def _tail(path: Path, chars: int = 2000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


def _match_log(server: ServerProcess, pattern: re.Pattern[str]) -> re.Match[str] | None:
    return pattern.search(_tail(server.log_path, 1_000_000))


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def start_streamserve(
    name: str,
    model_name: str,
    base_path: Path,
    log_dir: Path,
    extra_flags: list[str] = (),  # type: ignore[assignment]
) -> ServerProcess:
    """``streamserve serve`` on a free gRPC port and a free REST port."""
    command = [
        sys.executable, "-m", "streamserve", "--log-level=WARNING", "serve", f"--host={HOST}",
        "--port=0", f"--rest_api_port={free_port()}", f"--model_name={model_name}",
        f"--model_base_path={base_path}", *extra_flags,
    ]  # fmt: skip
    server = _spawn(name, command, log_dir)
    _wait_for(server, lambda: _match_log(server, _STREAMSERVE_READY) is not None, "serving")
    match = _match_log(server, _STREAMSERVE_READY)
    assert match is not None
    server.grpc_port, server.rest_port = int(match.group(1)), int(match.group(2))
    url = f"{server.rest_url}/v2/models/{model_name}/ready"
    _wait_for(server, lambda: _http_ok(url), "ready")
    return server


def uvloop_available() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


def start_minimal(
    model_path: Path, model_name: str, log_dir: Path, loop: str = "asyncio"
) -> ServerProcess:
    script = BENCHMARKS_DIR / "minimal_grpc" / "server.py"
    if not script.is_file():
        raise SetupError(f"minimal server not found at {script}")
    command = [sys.executable, str(script), f"--model={model_path}", f"--name={model_name}",
               f"--host={HOST}", "--port=0", f"--loop={loop}"]  # fmt: skip
    server = _spawn(f"minimal-grpc-{loop}", command, log_dir)
    _wait_for(server, lambda: _match_log(server, _MINIMAL_READY) is not None, "listening")
    match = _match_log(server, _MINIMAL_READY)
    assert match is not None
    server.grpc_port = int(match.group(1))
    return server


def find_mlserver(explicit: str | None) -> Path | None:
    """``--mlserver-bin``, else ``mlserver`` on PATH, else ``~/.venvs/mlserver/bin/mlserver``."""
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise SetupError(f"--mlserver-bin {explicit}: no such file")
        return path
    on_path = shutil.which("mlserver")
    if on_path:
        return Path(on_path)
    venv = Path("~/.venvs/mlserver/bin/mlserver").expanduser()
    return venv if venv.is_file() else None


def mlserver_version(binary: Path) -> str:
    done = subprocess.run([str(binary), "--version"], capture_output=True, text=True, check=False)
    return (done.stdout or done.stderr).strip().rsplit(" ", 1)[-1]


def prepare_mlserver_repository(work_dir: Path, model_name: str, model_path: Path) -> Path:
    """Copy the runtime and fill the settings templates from benchmarks/mlserver/."""
    templates = BENCHMARKS_DIR / "mlserver"
    if not (templates / "onnx_runtime.py").is_file():
        raise SetupError(f"MLServer runtime not found in {templates}")
    model_dir = work_dir / model_name
    model_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(templates / "onnx_runtime.py", model_dir / "onnx_runtime.py")
    shutil.copy(model_path, model_dir / "model.onnx")
    model_settings = json.loads((templates / "model-settings.json").read_text())
    model_settings["name"] = model_name
    model_settings["parameters"]["uri"] = "./model.onnx"
    (model_dir / "model-settings.json").write_text(json.dumps(model_settings, indent=2))
    settings = json.loads((templates / "settings.json").read_text())
    settings.update(host=HOST, http_port=free_port(), grpc_port=free_port(),
                    metrics_port=free_port())  # fmt: skip
    (work_dir / "settings.json").write_text(json.dumps(settings, indent=2))
    return work_dir


def start_mlserver(binary: Path, repository: Path, model_name: str, log_dir: Path) -> ServerProcess:
    settings = json.loads((repository / "settings.json").read_text())
    env = {key: value for key, value in os.environ.items() if not key.startswith("MLSERVER_")}
    server = _spawn("mlserver", [str(binary), "start", str(repository)], log_dir, cwd=repository,
                    env=env)  # fmt: skip
    server.grpc_port, server.rest_port = settings["grpc_port"], settings["http_port"]
    url = f"{server.rest_url}/v2/models/{model_name}/ready"
    _wait_for(server, lambda: _http_ok(url), "ready")
    return server


__all__ = [
    "BENCHMARKS_DIR",
    "ServerProcess",
    "find_mlserver",
    "free_port",
    "mlserver_version",
    "prepare_mlserver_repository",
    "start_minimal",
    "start_mlserver",
    "start_streamserve",
    "uvloop_available",
]
