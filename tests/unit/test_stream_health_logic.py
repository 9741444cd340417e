"""Stream health logic: liveness from progress beats, readiness from its conditions."""

from __future__ import annotations

import asyncio
import time

import httpx

from streamserve.errors import Unavailable
from streamserve.stream.health import (
    HealthPolicy,
    OperationsServer,
    StreamHealth,
    probe_model,
)
from streamserve.stream.telemetry import StreamMetrics


class _Probed:
    def __init__(self, target: str, error: Exception | None) -> None:
        self.target, self.mode, self._error = target, "remote", error

    async def predict(self, inputs: object, signature_name: str | None = None) -> object:
        raise NotImplementedError

    async def probe(self) -> None:
        if self._error is not None:
            raise self._error

    async def close(self) -> None:
        pass


def test_probe_model_is_ok_when_any_target_answers() -> None:
    down = _Probed("grpc://a:1", Unavailable("connection refused"))
    up = _Probed("grpc://b:1", None)
    assert asyncio.run(probe_model([down, up], 1.0)) is None  # type: ignore[list-item]
    reason = asyncio.run(probe_model([down], 1.0))  # type: ignore[list-item]
    assert reason == "model unavailable: grpc://a:1: connection refused"


def test_liveness_fails_when_the_consume_loop_stalls() -> None:
    health = StreamHealth(HealthPolicy(stall_timeout_s=1.0), lambda: False)
    health.consume_round()
    health._loop_beat = time.monotonic() + 60  # the event loop is fine
    health._consume_beat = time.monotonic() - 60  # the last consume round, long ago
    [problem] = health.liveness()
    assert problem.startswith("consume loop stalled")
    health.consume_stopped()  # draining: no longer a signal
    assert health.liveness() == []


def test_readiness_names_every_reason() -> None:
    health = StreamHealth(HealthPolicy(), lambda: True)
    health._model_problem = "model unavailable: x"
    assert health._readiness_problems() == [
        "model unavailable: x",
        "consumer has not joined its group yet",
        "circuit breaker open: every model server target is failing",
    ]


def test_operations_server_paths() -> None:
    health = StreamHealth(HealthPolicy(), lambda: False)
    server = OperationsServer(StreamMetrics().registry, health, 0, "127.0.0.1")
    try:
        base = f"http://127.0.0.1:{server.port}"
        assert httpx.get(f"{base}/healthz").status_code == 200
        ready = httpx.get(f"{base}/readyz")
        assert ready.status_code == 503 and "starting" in ready.text
        assert "streamserve_stream_records_in" in httpx.get(f"{base}/metrics").text
        assert httpx.get(f"{base}/other").status_code == 404
    finally:
        server.close()
