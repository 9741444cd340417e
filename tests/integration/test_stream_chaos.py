"""Acceptance 2 and 6: crashes and graceful stops lose nothing and duplicate nothing.

2. Exactly-once chaos: 20,000 records on 4 partitions, the processor process SIGKILLed at
   5 random moments and restarted; a read_committed reader sees every id exactly once.
6. SIGTERM under load: the process exits within 10 s; after a restart, every id exactly once.
"""

from __future__ import annotations

import json
import random
import signal
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from streamserve.testing import StreamProcess, produce, read_topic
from streamserve.waiting import wait_until
from tests.helpers import build_tiny_model

pytestmark = pytest.mark.integration

PARTITIONS = 4


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory, width=16)


def _record(i: int) -> tuple[int, bytes, bytes]:
    value = json.dumps({"id": i, "inputs": {"x": [[(i % 97) / 97.0] * 16]}}).encode()
    return (i % PARTITIONS, str(i).encode(), value)


class PacedProducer(threading.Thread):
    """Produces ``total`` records in chunks, one chunk per ``interval_s``, in the background."""

    def __init__(self, bootstrap: str, topic: str, total: int, chunks: int, interval_s: float):
        super().__init__(daemon=True)
        self.bootstrap, self.topic = bootstrap, topic
        self.total, self.chunks, self.interval_s = total, chunks, interval_s
        self.produced = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            per_chunk = self.total // self.chunks
            for chunk in range(self.chunks):
                start = chunk * per_chunk
                end = self.total if chunk == self.chunks - 1 else start + per_chunk
                self.produced += produce(
                    self.bootstrap, self.topic, (_record(i) for i in range(start, end))
                )
                time.sleep(self.interval_s)
        except BaseException as exc:
            self.error = exc


def _stream_args(
    bootstrap: str, source: str, sink: str, model: Path, guarantee: str, instance: str
) -> list[str]:
    return [
        "--bootstrap-servers",
        bootstrap,
        "--input-topic",
        source,
        "--output-topic",
        sink,
        "--group-id",
        f"g-{source}",
        "--guarantee",
        guarantee,
        "--instance-id",
        instance,
        "--model-base-path",
        str(model),
        "--model-name",
        "tiny",
        "--metrics-port",
        "0",
    ]


def _assert_exactly_once(outputs: list, total: int) -> None:
    counts = Counter(output.json()["id"] for output in outputs)
    lost = [i for i in range(total) if counts[i] == 0]
    duplicated = {i: n for i, n in counts.items() if n > 1}
    assert not lost and not duplicated, (
        f"{len(lost)} lost (e.g. {lost[:10]}), {len(duplicated)} duplicated "
        f"(e.g. {list(duplicated.items())[:10]})"
    )
    assert len(outputs) == total


def test_exactly_once_survives_sigkill_chaos(
    tiny_model: Path, kafka_bootstrap: str, topic_factory, tmp_path: Path
) -> None:
    total, kills = 20_000, 5
    seed = random.randrange(1_000_000)
    chaos = random.Random(seed)
    source, sink = topic_factory(PARTITIONS, "chaos-in"), topic_factory(PARTITIONS, "chaos-out")
    args = _stream_args(kafka_bootstrap, source, sink, tiny_model, "exactly-once", "chaos")
    producer = PacedProducer(kafka_bootstrap, source, total, chunks=20, interval_s=0.75)
    producer.start()

    progress = []
    for round_number in range(kills):
        stream = StreamProcess(args, tmp_path / f"run-{round_number}.log").start()
        stream.wait_ready()
        time.sleep(chaos.uniform(0.5, 3.0))  # the random moment of the crash (not a readiness wait)
        progress.append(stream.metric("streamserve_stream_records_in_total"))
        stream.kill()
    final = StreamProcess(args, tmp_path / "final.log").start()
    try:
        final.wait_ready()
        producer.join(120)
        assert producer.error is None and producer.produced == total
        outputs = read_topic(kafka_bootstrap, sink, total, timeout=120, quiet_s=3.0)
    finally:
        final.stop()
    print(f"chaos seed={seed}; records consumed by each killed run: {progress}")
    assert sum(1 for consumed in progress if consumed > 0) >= 3, (
        "kills did not hit a busy processor"
    )
    _assert_exactly_once(outputs, total)


@pytest.mark.parametrize("guarantee", ["exactly-once", "at-least-once"])
def test_sigterm_under_load_exits_quickly_and_restart_loses_nothing(
    guarantee: str, tiny_model: Path, kafka_bootstrap: str, topic_factory, tmp_path: Path
) -> None:
    total = 20_000
    source, sink = topic_factory(PARTITIONS, "term-in"), topic_factory(PARTITIONS, "term-out")
    args = _stream_args(kafka_bootstrap, source, sink, tiny_model, guarantee, "term")
    produce(kafka_bootstrap, source, (_record(i) for i in range(total)))  # a backlog: full load
    stream = StreamProcess(args, tmp_path / "first.log").start()
    stream.wait_ready()
    wait_until(
        lambda: stream.metric("streamserve_stream_records_in_total") >= 1000,
        60,
        "1000 records consumed",
        interval=0.1,
        describe=stream.log_tail,
    )
    consumed_at_stop = stream.metric("streamserve_stream_records_in_total")
    in_flight_at_stop = stream.metric("streamserve_stream_records_buffered")
    started = time.monotonic()
    stream.send_signal(signal.SIGTERM)
    code = stream.wait(timeout=10)  # acceptance: exits within 10 s
    took = time.monotonic() - started
    assert code == 0, stream.log_tail()
    assert "stream drained" in stream.log_text()

    restarted = StreamProcess(args, tmp_path / "second.log").start()
    try:
        restarted.wait_ready()
        outputs = read_topic(kafka_bootstrap, sink, total, timeout=120, quiet_s=3.0)
    finally:
        restarted.stop()
    print(
        f"{guarantee}: SIGTERM after {consumed_at_stop:.0f} of {total} records consumed, "
        f"{in_flight_at_stop:.0f} buffered; exit in {took:.2f} s"
    )
    assert consumed_at_stop < total, "the stop did not happen under load"
    _assert_exactly_once(outputs, total)
