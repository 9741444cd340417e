"""Start-up failures that need a real JVM or Maven: clear messages, nothing left running."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from streamserve.errors import SetupError
from streamserve.kafka import LocalKafka, jars, process
from streamserve.waiting import wait_until

pytestmark = pytest.mark.integration


def test_broker_dying_during_start_shows_its_last_log_lines() -> None:
    # Kafka's storage tool accepts this; the broker fails when it loads the reporter class.
    kafka = LocalKafka(extra_properties={"metric.reporters": "com.example.MissingReporter"})
    with pytest.raises(SetupError) as caught:
        kafka.start()
    message = caught.value.message
    assert "exited during start-up" in message
    assert "first error:" in message
    assert "ClassNotFoundException: com.example.MissingReporter" in message  # from its log
    assert kafka.pid is None
    assert kafka.data_dir is not None and not kafka.data_dir.exists()


def test_maven_unable_to_resolve_offline_shows_mavens_last_lines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if shutil.which("mvn") is None:
        pytest.skip("mvn is not installed")
    monkeypatch.setenv("STREAMSERVE_CACHE", str(tmp_path / "cache"))
    # An empty local repository plus --offline: Maven cannot resolve anything.
    monkeypatch.setenv("MAVEN_OPTS", f"-Dmaven.repo.local={tmp_path / 'empty-m2'}")
    with pytest.raises(SetupError) as caught:
        jars.ensure_jars(offline=True)
    message = caught.value.message
    assert "Maven could not resolve Apache Kafka" in message
    assert "offline" in message.lower()
    assert not jars.jars_cached()


def test_stop_sigkills_a_broker_that_does_not_stop_on_sigterm() -> None:
    with LocalKafka(stop_timeout=2.0) as kafka:
        pid = kafka.pid
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)  # a frozen JVM cannot act on SIGTERM; SIGKILL still works
    assert not process.pid_alive(pid)
    assert kafka.data_dir is not None and not kafka.data_dir.exists()


def test_broker_dies_with_a_killed_parent(tmp_path: Path) -> None:
    """SIGKILL leaves no chance for atexit: the kernel's parent-death signal stops the JVM."""
    script = (
        "import sys, time\n"
        "from streamserve.kafka import LocalKafka\n"
        f"kafka = LocalKafka(data_dir={str(tmp_path / 'data')!r}).start()\n"
        "print(kafka.pid, flush=True)\n"
        "time.sleep(600)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        broker_pid = int(parent.stdout.readline())
        assert process.pid_alive(broker_pid)
    finally:
        parent.kill()
        parent.wait()
    wait_until(lambda: not process.pid_alive(broker_pid), 60, "orphaned broker exit", interval=0.1)
