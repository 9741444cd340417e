"""Acceptance 4: the model server is killed mid-stream and restarted 10 s later.

Without fallback: 0 records lost, none in the DLQ, consumption paused and resumed, the
breaker went open → half-open → closed (metrics and log). With a fallback model: outputs
computed during the outage say ``"mode": "fallback"``.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from streamserve.testing import StreamProcess, model_server, produce, read_topic
from streamserve.waiting import wait_until

pytestmark = pytest.mark.integration

PARTITIONS = 2
TOTAL = 3_000
OUTAGE_S = 10.0


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from streamserve.models.toy import build_tiny

    base = tmp_path_factory.mktemp("models") / "tiny"
    build_tiny(base / "1", width=16)
    return base


def _paced_producer(bootstrap: str, topic: str, chunks: int, pause_s: float) -> threading.Thread:
    """Records arrive all through the outage (~chunks * pause_s seconds)."""

    def run() -> None:
        per_chunk = TOTAL // chunks
        for chunk in range(chunks):
            produce(
                bootstrap,
                topic,
                (
                    (
                        i % PARTITIONS,
                        str(i).encode(),
                        json.dumps({"id": i, "inputs": {"x": [[0.25] * 16]}}).encode(),
                    )
                    for i in range(chunk * per_chunk, (chunk + 1) * per_chunk)
                ),
            )
            time.sleep(pause_s)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("guarantee", ["exactly-once", "at-least-once"])
@pytest.mark.parametrize("fallback", [False, True], ids=["pause", "fallback"])
def test_model_server_outage(
    fallback: bool,
    guarantee: str,
    tiny_model: Path,
    kafka_bootstrap: str,
    topic_factory,
    tmp_path: Path,
) -> None:
    source, sink = topic_factory(PARTITIONS, "outage-in"), topic_factory(PARTITIONS, "outage-out")
    dlq = topic_factory(1, "outage-dlq")
    server = model_server("tiny", tiny_model, tmp_path / "serve.log", restartable=True)
    server.start().wait_ready(model="tiny")
    args = [
        "--bootstrap-servers",
        kafka_bootstrap,
        "--input-topic",
        source,
        "--output-topic",
        sink,
        "--dlq-topic",
        dlq,
        "--group-id",
        f"g-{source}",
        "--guarantee",
        guarantee,
        "--instance-id",
        "outage",
        "--model-server",
        server.grpc_url,
        "--model-name",
        "tiny",
        "--request-timeout-s",
        "2",
        "--breaker-failures",
        "3",
        "--breaker-cooldown-s",
        "0.5",
        "--breaker-max-cooldown-s",
        "2",
        "--metrics-port",
        "0",
    ]
    if fallback:
        args += ["--fallback-model-base-path", str(tiny_model)]
    stream = StreamProcess(args, tmp_path / "stream.log").start()
    try:
        stream.wait_ready()
        producer = _paced_producer(kafka_bootstrap, source, chunks=25, pause_s=0.4)
        wait_until(
            lambda: stream.metric("streamserve_stream_records_out_total") >= 300,
            60,
            "300 records out",
            interval=0.1,
            describe=stream.log_tail,
        )
        server.kill()  # mid-stream
        time.sleep(OUTAGE_S)  # the outage itself (not a readiness wait)
        server.start().wait_ready(model="tiny")
        producer.join(120)
        outputs = read_topic(kafka_bootstrap, sink, TOTAL, timeout=120, quiet_s=2.0)
        dead = read_topic(kafka_bootstrap, dlq, 0, timeout=5, quiet_s=1.0)
        transitions = {
            state: stream.metric("streamserve_stream_breaker_transitions_total", {"state": state})
            for state in ("open", "half-open", "closed")
        }
        pauses = stream.metric(
            "streamserve_stream_consumer_pauses_total", {"reason": "breaker-open"}
        )
        fallback_count = stream.metric("streamserve_stream_fallback_records_total")
    finally:
        stream.stop()
        server.stop()
    log = stream.log_text()

    counts = Counter(output.json()["id"] for output in outputs)
    lost = [i for i in range(TOTAL) if counts[i] == 0]
    assert not lost, f"{len(lost)} lost, e.g. {lost[:10]}\n{stream.log_tail()}"
    if guarantee == "exactly-once":
        assert len(outputs) == TOTAL, "duplicates"
    assert dead == [], "an outage must not send records to the DLQ"
    assert all(transitions[state] >= 1 for state in transitions), transitions
    for line in ("breaker open", "breaker half-open", "breaker closed"):
        assert line in log
    modes = Counter(output.json()["mode"] for output in outputs)
    print(
        f"fallback={fallback} {guarantee}: modes={dict(modes)} breaker={transitions} "
        f"pauses={pauses}"
    )
    if fallback:
        assert modes["fallback"] > 0 and fallback_count > 0, modes
        assert modes["remote"] > 0
    else:
        assert set(modes) == {"remote"}
        assert pauses >= 1 and "consumption paused" in log and "consumption resumed" in log
