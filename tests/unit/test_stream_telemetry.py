from __future__ import annotations

import json
import logging

from streamserve.stream.telemetry import JsonLogFormatter, StreamMetrics, log_event
from streamserve.testing import metric_value


def test_log_event_is_readable_text_and_structured_json(caplog) -> None:
    logger = logging.getLogger("streamserve.test.telemetry")
    with caplog.at_level(logging.INFO, logger=logger.name):
        log_event(logger, "breaker open", target="grpc://h:8500", failures=5, reason="a b")
    record = caplog.records[0]
    assert record.getMessage() == 'breaker open target=grpc://h:8500 failures=5 reason="a b"'
    document = json.loads(JsonLogFormatter().format(record))
    assert document["event"] == "breaker open" and document["failures"] == 5
    assert document["level"] == "INFO" and document["ts"].endswith("Z")
    plain = logging.LogRecord("x", logging.WARNING, __file__, 1, "hello %s", ("you",), None)
    assert json.loads(JsonLogFormatter().format(plain))["message"] == "hello you"


def test_metrics_have_their_own_registry_and_parse_back() -> None:
    first, second = StreamMetrics(), StreamMetrics()  # no clash between processors
    first.records_out.labels("remote").inc(3)
    first.records_out.labels("fallback").inc(2)
    first.breaker_state.labels("grpc://h:1").set(2)
    from prometheus_client import generate_latest

    text = generate_latest(first.registry).decode()
    assert metric_value(text, "streamserve_stream_records_out_total") == 5
    assert metric_value(text, "streamserve_stream_records_out_total", {"mode": "fallback"}) == 2
    assert metric_value(text, "streamserve_stream_breaker_state", {"target": "grpc://h:1"}) == 2
    assert (
        metric_value(
            generate_latest(second.registry).decode(), "streamserve_stream_records_out_total"
        )
        == 0
    )
