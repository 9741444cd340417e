"""Acceptance 3: two instances in one group, a third joins mid-stream (cooperative rebalance):
0 lost, 0 duplicates (exactly-once), and the first two both did work."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from streamserve.testing import StreamProcess, produce, read_topic
from streamserve.waiting import wait_until

pytestmark = pytest.mark.integration

PARTITIONS = 6
TOTAL = 12_000


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from streamserve.models.toy import build_tiny

    base = tmp_path_factory.mktemp("models") / "tiny"
    build_tiny(base / "1", width=16)
    return base


def _produce_paced(
    bootstrap: str, topic: str, chunks: int, pause_s: float, partitions: int = PARTITIONS
) -> threading.Thread:
    def run() -> None:
        per_chunk = TOTAL // chunks
        for chunk in range(chunks):
            ids = range(chunk * per_chunk, (chunk + 1) * per_chunk)
            produce(
                bootstrap,
                topic,
                (
                    (
                        i % partitions,
                        str(i).encode(),
                        json.dumps({"id": i, "inputs": {"x": [[i % 7 / 7.0] * 16]}}).encode(),
                    )
                    for i in ids
                ),
            )
            time.sleep(pause_s)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_third_instance_joins_mid_stream_without_loss_or_duplicates(
    tiny_model: Path, kafka_bootstrap: str, topic_factory, tmp_path: Path
) -> None:
    source, sink = topic_factory(PARTITIONS, "scale-in"), topic_factory(PARTITIONS, "scale-out")

    def args(instance: str) -> list[str]:
        return [
            "--bootstrap-servers",
            kafka_bootstrap,
            "--input-topic",
            source,
            "--output-topic",
            sink,
            "--group-id",
            f"g-{source}",
            "--guarantee",
            "exactly-once",
            "--instance-id",
            instance,
            "--model-base-path",
            str(tiny_model),
            "--model-name",
            "tiny",
            "--metrics-port",
            "0",
        ]

    first = StreamProcess(args("a"), tmp_path / "a.log").start()
    second = StreamProcess(args("b"), tmp_path / "b.log").start()
    third = StreamProcess(args("c"), tmp_path / "c.log")
    streams = [first, second, third]
    try:
        first.wait_ready()
        second.wait_ready()
        producer = _produce_paced(kafka_bootstrap, source, chunks=24, pause_s=0.5)
        wait_until(
            lambda: _consumed(first) + _consumed(second) >= TOTAL // 3,
            60,
            "a third of the records consumed",
            interval=0.2,
            describe=lambda: first.log_tail() + second.log_tail(),
        )
        third.start().wait_ready()  # joins mid-stream: a cooperative rebalance moves partitions
        producer.join(120)
        outputs = read_topic(kafka_bootstrap, sink, TOTAL, timeout=120, quiet_s=3.0)
        produced = {name: _produced(s) for name, s in zip("abc", streams, strict=True)}
    finally:
        for stream in streams:
            stream.stop()

    counts = Counter(output.json()["id"] for output in outputs)
    lost = [i for i in range(TOTAL) if counts[i] == 0]
    duplicated = [i for i, n in counts.items() if n > 1]
    print(f"outputs produced per instance: {produced}; lost={len(lost)} dup={len(duplicated)}")
    assert not lost and not duplicated, f"lost {lost[:10]}, duplicated {duplicated[:10]}"
    assert produced["a"] > 0 and produced["b"] > 0, produced
    assert "partitions revoked" in first.log_text() + second.log_text(), "no rebalance happened"
    assert produced["c"] > 0, "the joining instance got no work"


def _consumed(stream: StreamProcess) -> float:
    return stream.metric("streamserve_stream_records_in_total")


def _produced(stream: StreamProcess) -> float:
    return stream.metric("streamserve_stream_records_out_total")


def test_a_frozen_instance_is_fenced_and_nothing_is_duplicated(
    tiny_model: Path, kafka_bootstrap: str, topic_factory, tmp_path: Path
) -> None:
    """A zombie: instance a is frozen (SIGSTOP) past its session timeout, b takes its
    partitions, a wakes up with an open transaction. KIP-447 fencing + abort on lost
    partitions: every id exactly once."""
    import signal

    source, sink = topic_factory(4, "zombie-in"), topic_factory(4, "zombie-out")

    def args(instance: str) -> list[str]:
        return [
            "--bootstrap-servers",
            kafka_bootstrap,
            "--input-topic",
            source,
            "--output-topic",
            sink,
            "--group-id",
            f"g-{source}",
            "--guarantee",
            "exactly-once",
            "--instance-id",
            instance,
            "--model-base-path",
            str(tiny_model),
            "--model-name",
            "tiny",
            "--metrics-port",
            "0",
        ]

    zombie = StreamProcess(args("a"), tmp_path / "a.log").start()
    survivor = StreamProcess(args("b"), tmp_path / "b.log").start()
    try:
        zombie.wait_ready()
        survivor.wait_ready()
        producer = _produce_paced(kafka_bootstrap, source, chunks=30, pause_s=0.5, partitions=4)
        wait_until(
            lambda: _consumed(zombie) >= 1000 and _consumed(survivor) >= 1000,
            60,
            "1000 records consumed by each processor",
            interval=0.1,
            describe=lambda: zombie.log_tail() + survivor.log_tail(),
        )
        zombie.send_signal(signal.SIGSTOP)
        time.sleep(15)  # longer than session.timeout.ms (10 s): the group evicts a
        zombie.send_signal(signal.SIGCONT)
        producer.join(120)
        outputs = read_topic(kafka_bootstrap, sink, TOTAL, timeout=120, quiet_s=3.0)
    finally:
        zombie.send_signal(signal.SIGCONT)
        for stream in (zombie, survivor):
            stream.stop()

    counts = Counter(output.json()["id"] for output in outputs)
    lost = [i for i in range(TOTAL) if counts[i] == 0]
    duplicated = [i for i, n in counts.items() if n > 1]
    print(f"zombie: lost={len(lost)} dup={len(duplicated)}")
    assert not lost and not duplicated, f"lost {lost[:10]}, duplicated {duplicated[:10]}"
