"""Server processes the server benchmark measures: streamserve, MLServer, a minimal grpc.aio
V2 server. Each starts as a :class:`~streamserve.processes.ChildProcess` on free loopback
ports, is waited for with a deadline, and is stopped (SIGTERM, then SIGKILL) when the
benchmark ends."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

from benchmarks import BENCHMARKS_DIR
from streamserve.errors import SetupError
from streamserve.processes import ChildProcess, ModelServerProcess, free_port
from streamserve.waiting import WaitTimeout, wait_until

HOST = "127.0.0.1"
START_TIMEOUT_SECONDS = 180.0
MINIMAL_READY_PREFIX = "minimal-grpc: listening on "


class PeerProcess(ChildProcess):
    """A peer server (MLServer, the minimal grpc.aio server) and where to reach it."""

    def __init__(
        self,
        name: str,
        command: list[str],
        log_dir: Path,
        *,
        ready_prefix: str = "",
        cwd: Path | None = None,
        base_env: dict[str, str] | None = None,
    ) -> None:
        log_path = log_dir / f"{name}.log"
        super().__init__(
            command, log_path, ready_prefix=ready_prefix, cwd=cwd, base_env=base_env, name=name
        )
        self.grpc_port: int | None = None
        self.rest_port: int | None = None

    @property
    def grpc_target(self) -> str:
        return f"{HOST}:{self.grpc_port}"

    @property
    def rest_url(self) -> str:
        return f"http://{HOST}:{self.rest_port}"

    def on_ready(self, line: str) -> None:
        if line.startswith(MINIMAL_READY_PREFIX):
            self.grpc_port = int(line.rsplit(":", 1)[1].split()[0])


def _start(server: ChildProcess) -> None:
    """Start ``server`` and wait for its readiness line; a SetupError if it never comes."""
    server.start()
    try:
        server.wait_ready(START_TIMEOUT_SECONDS)
    except (RuntimeError, WaitTimeout) as exc:
        server.stop()
        raise SetupError(f"{server.name} did not start: {exc}") from exc


def _wait_http_ok(server: ChildProcess, url: str) -> None:
    try:
        wait_until(lambda: _http_ok(url) or server.raise_if_exited(), START_TIMEOUT_SECONDS,
                   f"{server.name} ready at {url}", interval=0.1,
                   describe=server.failure_context)  # fmt: skip
    except (RuntimeError, WaitTimeout) as exc:
        server.stop()
        raise SetupError(str(exc)) from exc


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
) -> ModelServerProcess:
    """``streamserve serve`` on a free gRPC port and a free REST port."""
    flags = [f"--model_name={model_name}", f"--model_base_path={base_path}", *extra_flags]
    log_path = log_dir / f"{name}.log"
    server = ModelServerProcess(flags, log_path, global_flags=["--log-level=WARNING"])
    server.name = name
    _start(server)
    _wait_http_ok(server, f"{server.rest_url}/v2/models/{model_name}/ready")
    return server


def uvloop_available() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


def start_minimal(
    model_path: Path, model_name: str, log_dir: Path, loop: str = "asyncio"
) -> PeerProcess:
    script = BENCHMARKS_DIR / "minimal_grpc" / "server.py"
    if not script.is_file():
        raise SetupError(f"minimal server not found at {script}")
    command = [sys.executable, str(script), f"--model={model_path}", f"--name={model_name}",
               f"--host={HOST}", "--port=0", f"--loop={loop}"]  # fmt: skip
    server = PeerProcess(f"minimal-grpc-{loop}", command, log_dir,
                         ready_prefix=MINIMAL_READY_PREFIX)  # fmt: skip
    _start(server)
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


def start_mlserver(binary: Path, repository: Path, model_name: str, log_dir: Path) -> PeerProcess:
    settings = json.loads((repository / "settings.json").read_text())
    env = {key: value for key, value in os.environ.items() if not key.startswith("MLSERVER_")}
    server = PeerProcess("mlserver", [str(binary), "start", str(repository)], log_dir,
                         cwd=repository, base_env=env)  # fmt: skip
    server.grpc_port, server.rest_port = settings["grpc_port"], settings["http_port"]
    _start(server)
    _wait_http_ok(server, f"{server.rest_url}/v2/models/{model_name}/ready")
    return server


__all__ = [
    "BENCHMARKS_DIR",
    "PeerProcess",
    "find_mlserver",
    "free_port",
    "mlserver_version",
    "prepare_mlserver_repository",
    "start_minimal",
    "start_mlserver",
    "start_streamserve",
    "uvloop_available",
]
