"""Child processes of ``python -m benchmarks stream``: the model server and processor workers.

Both are :class:`streamserve.processes.ChildProcess` subclasses: started with the running
interpreter, readiness announced by one stdout line (waited for with a deadline, never a
sleep), logged to a file in the output folder, stopped with SIGTERM (SIGKILL after a
deadline). :func:`cpu_seconds` reads a process's user+system CPU time from ``/proc``.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Any, Self

from benchmarks import BENCHMARKS_DIR
from benchmarks.common import process_tree_cpu_seconds
from benchmarks.stream_worker import READY_PREFIX, WorkerSpec
from streamserve.processes import ChildProcess, ModelServerProcess


def cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU seconds used so far by ``pid`` and its children (``None`` if
    unknown or gone)."""
    if pid is None or not Path(f"/proc/{pid}").exists():
        return None
    return process_tree_cpu_seconds(pid)


class ServerProcess(ModelServerProcess):
    """``streamserve serve`` for one model on fixed local ports (so a restart reuses them)."""

    def __init__(self, model_name: str, base_path: Path, log_path: Path) -> None:
        flags = [f"--model_name={model_name}", f"--model_base_path={base_path}"]
        super().__init__(flags, log_path, restartable=True)  # restarted in place after an outage
        self.model_name = model_name

    def start_and_wait(self, timeout: float = 120.0) -> Self:
        return self.start().wait_ready(timeout, model=self.model_name)


class WorkerProcess(ChildProcess):
    """``python -m benchmarks.stream_worker SPEC`` (one :class:`StreamProcessor`)."""

    ready_prefix = READY_PREFIX

    def __init__(self, spec: WorkerSpec, spec_path: Path, log_path: Path) -> None:
        spec.save(spec_path)
        super().__init__(
            [sys.executable, "-m", "benchmarks.stream_worker", str(spec_path)],
            log_path,
            env={"PYTHONPATH": _with_checkout_on_path(os.environ.get("PYTHONPATH", ""))},
            name="bench worker",
        )
        self.spec = spec
        self.metrics_port: int | None = None

    def on_ready(self, line: str) -> None:
        value = line.rpartition("metrics_port=")[2].split()[0]
        self.metrics_port = int(value) if value.isdigit() else None

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


def _with_checkout_on_path(pythonpath: str) -> str:
    """``pythonpath`` plus the checkout holding ``benchmarks`` (it is not installed)."""
    return os.pathsep.join(filter(None, [str(BENCHMARKS_DIR.parent), pythonpath]))
