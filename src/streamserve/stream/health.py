"""Health of a running stream processor, for Kubernetes probes, on the metrics port.

``GET /healthz`` (liveness) answers 200 while the processor makes progress, 503 once

- the event loop has not run its heartbeat for ``stall_timeout_s``, or
- the consume loop has not completed a round for ``stall_timeout_s`` (e.g. a call on the
  consumer thread never returns: a stuck broker call or rebalance callback).

``GET /readyz`` (readiness) answers 200 when the model answers (embedded: a version is
loaded; remote: at least one server reports the model AVAILABLE, probed every
``probe_interval_s``), the consumer has joined its group, not every circuit breaker
is open, and no dependency the records need is unreachable (the schema registry: its
reason names it); else 503. Both bodies are one line of text: ``ok`` or the reasons.

``GET /metrics`` is Prometheus' exposition of the processor's registry; any other path
is 404. The HTTP server runs on its own thread, so it answers (503) even when the
event loop is stuck.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from streamserve.errors import StreamserveError
from streamserve.predictors.base import Predictor, Probeable

DEFAULT_STALL_TIMEOUT_S = 30.0
HEARTBEAT_S = 0.5


@dataclass(frozen=True)
class HealthPolicy:
    """``stall_timeout_s``: liveness bound; ``probe_interval_s`` / ``probe_timeout_s``:
    how often and how long the model is probed for readiness."""

    stall_timeout_s: float = DEFAULT_STALL_TIMEOUT_S
    probe_interval_s: float = 2.0
    probe_timeout_s: float = 5.0


class StreamHealth:
    """Progress beats and readiness reasons; written on the event loop, read by the HTTP
    thread (plain attribute reads and writes)."""

    def __init__(self, policy: HealthPolicy, breakers_open: Callable[[], bool]) -> None:
        self.policy = policy
        self._breakers_open = breakers_open
        now = time.monotonic()
        self._loop_beat = now
        self._consume_beat = now
        self._consuming = False
        self.joined = False
        self._model_problem: str | None = "model not checked yet"
        self._not_ready: list[str] = ["starting"]
        self.dependency_problem: str | None = None  # e.g. the schema registry unreachable

    # -- written by the processor ---------------------------------------------------------

    def consume_round(self) -> None:
        """The consume loop completed a round."""
        self._consume_beat = time.monotonic()
        self._consuming = True

    def consume_stopped(self) -> None:
        """The consume loop ended on purpose (drain): no longer a liveness signal."""
        self._consuming = False

    async def watch(self, predictors: Sequence[Predictor]) -> None:
        """Heartbeat the event loop and re-probe the model until cancelled."""
        next_probe = 0.0
        while True:
            self._loop_beat = time.monotonic()
            if self._loop_beat >= next_probe:
                self._model_problem = await probe_model(predictors, self.policy.probe_timeout_s)
                next_probe = time.monotonic() + self.policy.probe_interval_s
            self._not_ready = self._readiness_problems()
            await asyncio.sleep(HEARTBEAT_S)

    # -- read by the HTTP thread ----------------------------------------------------------

    def liveness(self) -> list[str]:
        """Why the processor is not live ([] when it is)."""
        now, bound = time.monotonic(), self.policy.stall_timeout_s
        problems = []
        if now - self._loop_beat > bound:
            problems.append(f"event loop stalled for {now - self._loop_beat:.1f}s (bound {bound}s)")
        if self._consuming and now - self._consume_beat > bound:
            stalled = now - self._consume_beat
            problems.append(
                f"consume loop stalled for {stalled:.1f}s (bound {bound}s): "
                "a call on the Kafka consumer thread has not returned"
            )
        return problems

    def readiness(self) -> list[str]:
        """Why the processor is not ready ([] when it is); live problems count too."""
        return self.liveness() + self._not_ready

    def _readiness_problems(self) -> list[str]:
        problems = []
        if self._model_problem is not None:
            problems.append(self._model_problem)
        if not self.joined:
            problems.append("consumer has not joined its group yet")
        if self.dependency_problem is not None:
            problems.append(self.dependency_problem)
        if self._breakers_open():
            problems.append("circuit breaker open: every model server target is failing")
        return problems


async def probe_model(predictors: Sequence[Predictor], timeout_s: float) -> str | None:
    """None when any predictor's model answers its probe; else why none does."""
    reasons = []
    for predictor in predictors:
        if not isinstance(predictor, Probeable):
            return None  # cannot tell: do not hold readiness back
        try:
            await asyncio.wait_for(predictor.probe(), timeout_s)
        except StreamserveError as exc:  # remote errors already start with the target
            message = exc.message
            named = message.startswith(predictor.target)
            reasons.append(message if named else f"{predictor.target}: {message}")
        except TimeoutError:
            reasons.append(f"{predictor.target}: no answer within {timeout_s}s")
        else:
            return None
    return "model unavailable: " + "; ".join(reasons)


class OperationsServer:
    """``/metrics``, ``/healthz`` and ``/readyz`` on ``addr:port`` (0: a free port)."""

    def __init__(
        self, registry: CollectorRegistry, health: StreamHealth, port: int, addr: str = "0.0.0.0"
    ) -> None:
        handler = _handler_for(registry, health)
        self._server = ThreadingHTTPServer((addr, port), handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="stream-operations-http", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._server.shutdown()
            self._server.server_close()
        self._thread.join(5)


def _handler_for(registry: CollectorRegistry, health: StreamHealth) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.partition("?")[0]
            if path == "/metrics":
                self._reply(200, generate_latest(registry), CONTENT_TYPE_LATEST)
            elif path in ("/healthz", "/readyz"):
                problems = health.liveness() if path == "/healthz" else health.readiness()
                body = ("; ".join(problems) if problems else "ok") + "\n"
                self._reply(503 if problems else 200, body.encode(), "text/plain; charset=utf-8")
            else:
                self._reply(404, b"not found: try /metrics, /healthz or /readyz\n", "text/plain")

        def _reply(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            """Probes every few seconds: no log line each."""

    return Handler
