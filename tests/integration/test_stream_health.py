"""Stream processor health: fail-fast embedded start-up, ``/readyz`` and ``/healthz``.

1. Embedded with a corrupt model: ``stream`` exits with status 6 and the load error.
2. Remote with the model server down: ``/readyz`` 503 with the reason, ``/healthz`` 200;
   once the server is up, ``/readyz`` 200. Other paths are 404.
3. A consumer thread stuck in a call (a blocked callback) turns ``/healthz`` 503 with the
   reason; when it returns, ``/healthz`` is 200 again.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from streamserve.cli import EXIT_MODEL_LOAD_FAILED
from streamserve.models.toy import build_tiny
from streamserve.processes import LOCALHOST, ModelServerProcess, free_port
from streamserve.stream import ProcessorConfig, StreamProcessor, TensorJsonCodec
from streamserve.stream.health import HealthPolicy
from streamserve.testing import StreamProcess
from streamserve.waiting import wait_until

pytestmark = pytest.mark.integration


def _kafka_args(bootstrap: str, topic_factory: Callable[..., str]) -> list[str]:
    source, sink = topic_factory(1, "in"), topic_factory(1, "out")
    return [
        *("--bootstrap-servers", bootstrap, "--input-topic", source),
        *("--output-topic", sink, "--group-id", f"g-{source}", "--instance-id", "health-1"),
    ]


def _get(port: int, path: str) -> httpx.Response:
    return httpx.get(f"http://{LOCALHOST}:{port}{path}", timeout=10)


def test_embedded_stream_with_a_corrupt_model_exits_with_the_load_error(
    kafka_bootstrap: str, topic_factory: Callable[..., str], tmp_path: Path
) -> None:
    version = tmp_path / "broken" / "1"
    version.mkdir(parents=True)
    (version / "model.onnx").write_bytes(b"\x08\x07not an onnx model")
    args = [*_kafka_args(kafka_bootstrap, topic_factory), "--model-base-path", str(version.parent)]
    stream = StreamProcess(args, tmp_path / "stream.log").start()
    try:
        assert stream.wait(timeout=60) == EXIT_MODEL_LOAD_FAILED
    finally:
        stream.stop()
    log = stream.log_text()
    assert "error: initial model load failed: model 'broken': version 1:" in log


def test_remote_stream_is_live_but_not_ready_while_the_server_is_down(
    kafka_bootstrap: str, topic_factory: Callable[..., str], tmp_path: Path
) -> None:
    build_tiny(tmp_path / "tiny" / "1")
    server = ModelServerProcess(
        ["--model_name=tiny", f"--model_base_path={tmp_path / 'tiny'}"],
        tmp_path / "serve.log",
        grpc_port=free_port(),
    )
    args = [
        *_kafka_args(kafka_bootstrap, topic_factory),
        *("--model-server", server.grpc_url, "--model-name", "tiny", "--metrics-port", "0"),
    ]
    with StreamProcess(args, tmp_path / "stream.log") as stream:
        port = stream.wait_ready().metrics_port
        reply = wait_until(
            lambda: (r := _get(port, "/readyz")).status_code == 503 and "model" in r.text and r,
            60,
            "/readyz 503 naming the model",
        )
        assert f"{server.grpc_url}:" in reply.text, reply.text
        assert _get(port, "/healthz").status_code == 200
        assert _get(port, "/nothing-here").status_code == 404
        assert "streamserve_stream_records_in" in _get(port, "/metrics").text
        with server:
            server.wait_ready(model="tiny")
            wait_until(lambda: _get(port, "/readyz").status_code == 200, 60, "/readyz 200")
        assert _get(port, "/healthz").status_code == 200


def test_a_stuck_consumer_thread_fails_liveness(
    kafka_bootstrap: str, topic_factory: Callable[..., str], tmp_path: Path
) -> None:
    from streamserve.predictors.factory import create_embedded_predictor

    build_tiny(tmp_path / "tiny" / "1")
    source, sink = topic_factory(1, "in"), topic_factory(1, "out")
    config = ProcessorConfig(
        kafka_bootstrap,
        source,
        sink,
        f"g-{source}",
        instance_id="stall",
        metrics_port=0,
        health=HealthPolicy(stall_timeout_s=1.0),
    )
    release = threading.Event()

    async def scenario() -> tuple[int, str, int]:
        predictor = create_embedded_predictor(tmp_path / "tiny", "tiny")
        processor = StreamProcessor(config, predictor, TensorJsonCodec())
        running = asyncio.create_task(processor.run())
        try:
            port = await asyncio.to_thread(_ready_port, processor)
            # a callback that never returns: the consumer thread is stuck in it
            stuck = asyncio.create_task(processor._kafka.call(release.wait))
            stalled = await asyncio.to_thread(_wait_status, port, "/healthz", 503)
            release.set()
            await stuck
            recovered = await asyncio.to_thread(_wait_status, port, "/healthz", 200)
            return stalled.status_code, stalled.text, recovered.status_code
        finally:
            release.set()
            processor.stop()
            await running
            await predictor.close()

    stalled_status, reason, recovered_status = asyncio.run(scenario())
    assert stalled_status == 503 and recovered_status == 200
    assert "consume loop stalled" in reason and "consumer thread" in reason


def _ready_port(processor: StreamProcessor) -> int:
    def ready() -> int | None:
        port = processor.metrics_port
        return port if port and _get(port, "/readyz").status_code == 200 else None

    return wait_until(ready, 60, "processor ready")


def _wait_status(port: int, path: str, status: int) -> httpx.Response:
    def reached() -> httpx.Response | None:
        reply = _get(port, path)
        return reply if reply.status_code == status else None

    return wait_until(reached, 30, f"{path} {status}")
