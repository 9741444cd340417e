"""streamserve.processes.ChildProcess: readiness line, failure with log tail, SIGTERM then
SIGKILL, and the readiness-line parsing of the server and stream subclasses."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from streamserve.processes import (
    SERVER_READY_PREFIX,
    STREAM_READY_PREFIX,
    ChildProcess,
    ModelServerProcess,
    StreamProcess,
    metric_value,
)
from streamserve.waiting import WaitTimeout


def python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_ready_line_is_detected_and_output_is_logged(tmp_path: Path) -> None:
    code = "import time; print('warming'); print('READY port=7', flush=True); time.sleep(60)"
    with ChildProcess(python(code), tmp_path / "c.log", ready_prefix="READY") as child:
        assert child.wait_ready(10).ready_line == "READY port=7"
    assert child.returncode is not None
    assert "warming" in child.log_text() and "READY port=7" in child.log_tail(5)


def test_exit_before_ready_raises_with_the_log_tail(tmp_path: Path) -> None:
    code = "import sys; print('config is broken', file=sys.stderr); sys.exit(3)"
    child = ChildProcess(python(code), tmp_path / "c.log", ready_prefix="READY")
    with child, pytest.raises(RuntimeError, match="exited with 3") as failure:
        child.wait_ready(10)
    assert "config is broken" in str(failure.value)


def test_no_ready_line_in_time_is_a_wait_timeout(tmp_path: Path) -> None:
    code = "import time; time.sleep(60)"
    child = ChildProcess(python(code), tmp_path / "c.log", ready_prefix="READY")
    with child, pytest.raises(WaitTimeout):
        child.wait_ready(0.3)


def test_stop_kills_a_child_that_ignores_sigterm(tmp_path: Path) -> None:
    code = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print('READY', flush=True); time.sleep(60)"
    )
    child = ChildProcess(python(code), tmp_path / "c.log", ready_prefix="READY").start()
    child.wait_ready(10)
    assert child.stop(timeout=0.5) == -9


def test_server_ready_line_gives_the_bound_ports(tmp_path: Path) -> None:
    server = ModelServerProcess(["--model_name=m"], tmp_path / "s.log")
    server.on_ready(f"{SERVER_READY_PREFIX}127.0.0.1:4242, REST on 127.0.0.1:4343")
    assert (server.grpc_target, server.grpc_url) == ("127.0.0.1:4242", "grpc://127.0.0.1:4242")
    assert server.rest_url == "http://127.0.0.1:4343"
    assert server.command[-1] == "--model_name=m"


def test_stream_ready_line_fields(tmp_path: Path) -> None:
    stream = StreamProcess(["--input-topic", "in"], tmp_path / "s.log")
    stream.on_ready(f"{STREAM_READY_PREFIX} metrics_port=9100 instance=one")
    assert stream.metrics_port == 9100 and stream.ready_info["instance"] == "one"


def test_metric_value_sums_matching_samples() -> None:
    text = "\n".join([
        "# TYPE x_total counter",
        'x_total{state="open",target="a"} 2.0',
        'x_total{state="open",target="b"} 3.0',
        'x_total{state="closed",target="a"} 7.0',
        "x_total_created 1.0",
    ])  # fmt: skip
    assert metric_value(text, "x_total", {"state": "open"}) == 5.0
    assert metric_value(text, "x_total") == 12.0
