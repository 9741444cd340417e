"""What the stream processor tells operators: Prometheus metrics and structured log events.

Each :class:`StreamMetrics` owns its own registry (several processors may share one
Python process, as tests do). ``serve(port)`` exposes it over HTTP (``/metrics``).

Log events are one-line messages ``"<event> key=value ..."``; the fields are also
attached to the log record (``record.event``, ``record.fields``) so that
:class:`JsonLogFormatter` can write them as one JSON object per line.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

_NS = "streamserve_stream"
_LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class StreamMetrics:
    """The processor's Prometheus series (names start with ``streamserve_stream_``)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.records_in = Counter(f"{_NS}_records_in", "Records consumed", ["topic"], registry=r)
        self.records_out = Counter(
            f"{_NS}_records_out", "Output records produced", ["mode"], registry=r
        )
        self.records_dlq = Counter(
            f"{_NS}_records_dlq", "Records sent to the dead-letter topic", ["stage"], registry=r
        )
        self.fallback_records = Counter(
            f"{_NS}_fallback_records", "Outputs computed by the fallback model", registry=r
        )
        self.e2e_latency = Histogram(
            f"{_NS}_end_to_end_latency_seconds",
            "Input record timestamp to its output being produced",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.model_call_latency = Histogram(
            f"{_NS}_model_call_seconds",
            "One model call (one micro-batch)",
            ["mode"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            f"{_NS}_batch_size", "Records per model call", buckets=_BATCH_BUCKETS, registry=r
        )
        self.in_flight = Gauge(f"{_NS}_model_calls_in_flight", "Model calls running", registry=r)
        self.buffered = Gauge(
            f"{_NS}_records_buffered", "Records consumed but not yet produced", registry=r
        )
        self.consumer_lag = Gauge(
            f"{_NS}_consumer_lag",
            "High watermark minus next offset to consume",
            ["topic", "partition"],
            registry=r,
        )
        self.breaker_state = Gauge(
            f"{_NS}_breaker_state",
            "Circuit breaker: 0 closed, 1 half-open, 2 open",
            ["target"],
            registry=r,
        )
        self.breaker_transitions = Counter(
            f"{_NS}_breaker_transitions",
            "Circuit breaker state changes, by new state",
            ["target", "state"],
            registry=r,
        )
        self.retries = Counter(
            f"{_NS}_model_call_retries",
            "Model calls retried after a transient error",
            ["reason"],
            registry=r,
        )
        self.paused = Gauge(
            f"{_NS}_consumer_paused", "1 while consumption is paused (backpressure)", registry=r
        )
        self.pauses = Counter(
            f"{_NS}_consumer_pauses",
            "Times consumption was paused, by reason",
            ["reason"],
            registry=r,
        )
        self.commits = Counter(
            f"{_NS}_commits",
            "Checkpoints (transaction or offset commits), by result",
            ["result"],
            registry=r,
        )
        self.rebalances = Counter(
            f"{_NS}_rebalances", "Partition assignment changes, by kind", ["kind"], registry=r
        )
        self.client_rebuilds = Counter(
            f"{_NS}_kafka_client_rebuilds",
            "Kafka consumer+producer rebuilt after a fatal client error",
            registry=r,
        )

    def serve(self, port: int, addr: str = "0.0.0.0") -> int:
        """Serve ``/metrics`` on ``port`` (0 picks a free one); return the bound port."""
        server, _thread = start_http_server(port, addr=addr, registry=self.registry)
        return int(server.server_port)


def log_event(
    logger: logging.Logger, event: str, level: int = logging.INFO, /, **fields: Any
) -> None:
    """Log ``event`` with ``fields`` as ``key=value`` text and as structured attributes."""
    if not logger.isEnabledFor(level):
        return
    text = " ".join(f"{key}={_field_text(value)}" for key, value in fields.items())
    logger.log(level, "%s %s", event, text, extra={"event": event, "fields": fields})


def _field_text(value: object) -> str:
    text = str(value)
    return json.dumps(text) if (" " in text or not text) else text


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, event/message and the event's fields."""

    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
        }
        event = getattr(record, "event", None)
        if event is not None:
            document["event"] = event
            document.update(getattr(record, "fields", {}))
        else:
            document["message"] = record.getMessage()
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        return json.dumps(document, default=str)
