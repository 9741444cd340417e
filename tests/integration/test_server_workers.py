"""``streamserve serve --workers N``: worker processes on shared ports under one supervisor.

Against real processes: metrics from all workers add up on any scrape, a killed worker is
restarted, SIGTERM to the supervisor stops every worker.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import httpx
import numpy as np
import pytest

from streamserve.models.toy import build_tiny
from streamserve.processes import metric_value
from streamserve.protos.v2 import grpc_service_pb2 as pb
from streamserve.protos.v2 import grpc_service_pb2_grpc as pb_grpc
from streamserve.waiting import wait_until

if TYPE_CHECKING:
    from .conftest import ServerProcess

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

WORKERS = 2
REQUESTS = 24  # per protocol, each on a new connection so the kernel spreads them


@pytest.fixture
def tiny_base(tmp_path: Path) -> Path:
    build_tiny(tmp_path / "tiny" / "1")
    return tmp_path / "tiny"


@pytest.fixture
def workers_server(serve_process: Callable[..., ServerProcess], tiny_base: Path) -> ServerProcess:
    server = serve_process(
        f"--workers={WORKERS}", "--model_name=tiny", f"--model_base_path={tiny_base}"
    )
    return server.wait_ready(model="tiny")


def worker_pids(supervisor: int) -> set[int]:
    text = Path(f"/proc/{supervisor}/task/{supervisor}/children").read_text()
    return {int(pid) for pid in text.split()}


def metrics_dir_of(pid: int) -> Path:
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    entries = dict(entry.decode().split("=", 1) for entry in environ if b"=" in entry)
    return Path(entries["PROMETHEUS_MULTIPROC_DIR"])


def rest_predict(server: ServerProcess) -> None:
    body = {"instances": np.zeros((1, 64), np.float32).tolist()}
    reply = httpx.post(f"{server.rest_url}/v1/models/tiny:predict", json=body, timeout=30)
    assert reply.status_code == 200, reply.text


def grpc_infer(server: ServerProcess) -> None:
    request = pb.ModelInferRequest(model_name="tiny")
    request.inputs.add(name="x", datatype="FP32", shape=[1, 64])
    request.raw_input_contents.append(np.zeros((1, 64), np.float32).tobytes())
    with grpc.insecure_channel(server.grpc_target) as channel:
        pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)


def requests_total(server: ServerProcess, protocol: str, api: str) -> float:
    text = httpx.get(f"{server.rest_url}/metrics", timeout=10).text
    labels = {"protocol": protocol, "api": api, "status": "OK"}
    return metric_value(text, "streamserve_requests_total", labels)


def test_metrics_of_all_workers_add_up(workers_server: ServerProcess) -> None:
    workers = worker_pids(workers_server.pid)
    assert len(workers) == WORKERS
    for _ in range(REQUESTS):
        rest_predict(workers_server)
        grpc_infer(workers_server)
    for _ in range(4):  # every scrape, whichever worker answers it, sees the sum
        assert requests_total(workers_server, "tfserving", "predict") == REQUESTS
        assert requests_total(workers_server, "v2", "infer") == REQUESTS
    files = {path.name for path in metrics_dir_of(min(workers)).iterdir()}
    assert {f"counter_{pid}.db" for pid in workers} <= files  # both workers counted requests
    text = httpx.get(f"{workers_server.rest_url}/metrics", timeout=10).text
    assert metric_value(text, "streamserve_model_version_state", {"model": "tiny"}) == 30


def test_a_killed_worker_is_restarted(workers_server: ServerProcess) -> None:
    before = worker_pids(workers_server.pid)
    victim = min(before)
    rest_predict(workers_server)
    os.kill(victim, signal.SIGKILL)
    wait_until(
        lambda: (
            len(worker_pids(workers_server.pid) - before) == 1
            and "restarted" in workers_server.log_text()
        ),
        120,
        "a new worker in place of the killed one",
        describe=workers_server.failure_context,
    )
    after = worker_pids(workers_server.pid)
    assert len(after) == WORKERS and victim not in after
    assert f"pid {victim}) exited with code -9; restarting" in workers_server.log_text()
    for _ in range(REQUESTS):
        rest_predict(workers_server)
    # the dead worker's count stays in the sum
    assert requests_total(workers_server, "tfserving", "predict") == REQUESTS + 1


def test_sigterm_to_the_supervisor_stops_every_worker(workers_server: ServerProcess) -> None:
    workers = worker_pids(workers_server.pid)
    metrics_dir = metrics_dir_of(min(workers))
    assert workers_server.stop() == 0
    for pid in workers:
        assert not Path(f"/proc/{pid}").exists() or _is_zombie(pid)
    assert not metrics_dir.exists()  # the supervisor's temporary folder is gone
    assert "stopping 2 workers" in workers_server.log_text()


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True
