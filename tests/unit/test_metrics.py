"""ServerMetrics series and the monitoring config parser."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from streamserve.errors import InvalidArgument
from streamserve.server.metrics import (
    TF_SERVING_METRICS_PATH,
    MonitoringConfig,
    ServerMetrics,
    parse_monitoring_config,
)
from streamserve.waiting import wait_until


def samples(metrics: ServerMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def test_series_have_the_documented_labels_and_values() -> None:
    metrics = ServerMetrics()
    for _ in range(3):
        metrics.observe_request("m", "2", "v2", "infer", "OK", 0.002)
    metrics.observe_request("m", "2", "tfserving", "predict", "INVALID_ARGUMENT", 0.001)
    metrics.batch_observer("m", "2")(8)
    metrics.track_queue("m", "2", lambda: 5)
    metrics.on_version_state("m", 2, 30, 0.25)
    got = samples(metrics)
    labels = (("api", "infer"), ("model", "m"), ("protocol", "v2"), ("status", "OK"))
    assert got[("streamserve_requests_total", (*labels, ("version", "2")))] == 3
    assert got[("streamserve_request_latency_seconds_count", (*labels, ("version", "2")))] == 3
    bad = (("api", "predict"), ("model", "m"), ("protocol", "tfserving"))
    key = (*bad, ("status", "INVALID_ARGUMENT"), ("version", "2"))
    assert got[("streamserve_requests_total", key)] == 1
    mv = (("model", "m"), ("version", "2"))
    assert got[("streamserve_batch_size_sum", mv)] == 8
    assert got[("streamserve_batch_queue_rows", mv)] == 5
    assert got[("streamserve_model_version_state", mv)] == 30
    assert got[("streamserve_model_load_seconds_count", (("model", "m"),))] == 1
    assert any(name == "streamserve_process_cpu_seconds_total" for name, _ in got)


def test_untracked_queue_disappears() -> None:
    metrics = ServerMetrics(process=False)
    metrics.track_queue("m", "1", lambda: 1)
    metrics.untrack_queue("m", "1")
    assert not any(name == "streamserve_batch_queue_rows" for name, _ in samples(metrics))


def test_two_servers_do_not_share_a_registry() -> None:
    first, second = ServerMetrics(process=False), ServerMetrics(process=False)
    first.observe_request("m", "1", "v2", "infer", "OK", 0.1)
    assert not any(name == "streamserve_requests_total" for name, _ in samples(second))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            'prometheus_config: {\n  enable: true,\n  path: "/monitoring/prometheus/metrics"\n}\n',
            MonitoringConfig(True, TF_SERVING_METRICS_PATH),
        ),
        ('prometheus_config { enable: true path: "/custom" }', MonitoringConfig(True, "/custom")),
        ("prometheus_config { enable: true }", MonitoringConfig(True, TF_SERVING_METRICS_PATH)),
        ("prometheus_config { enable: false }", MonitoringConfig(False, TF_SERVING_METRICS_PATH)),
        ("", MonitoringConfig(False, TF_SERVING_METRICS_PATH)),
    ],
)
def test_parse_monitoring_config(text: str, expected: MonitoringConfig) -> None:
    assert parse_monitoring_config(text) == expected


def test_bad_monitoring_config_is_rejected() -> None:
    with pytest.raises(InvalidArgument, match="must start with"):
        parse_monitoring_config('prometheus_config { enable: true path: "metrics" }')
    with pytest.raises(InvalidArgument, match="something_else"):
        parse_monitoring_config("something_else { }")


def test_follow_before_start_records_initial_load_latency(tmp_path: Path) -> None:
    from streamserve.models.toy import build_tiny
    from streamserve.repository import ModelConfig, ModelManager

    build_tiny(tmp_path / "tiny" / "1")
    manager = ModelManager(
        [ModelConfig("tiny", tmp_path / "tiny")], file_system_poll_wait_seconds=0
    )
    metrics = ServerMetrics(process=False)
    metrics.follow(manager)
    metrics.follow(manager)  # idempotent
    with manager:
        assert manager.wait_for_state("tiny", 1, 30, timeout=30)
        key = ("streamserve_model_load_seconds_count", (("model", "tiny"),))
        # listeners run on the manager's event thread
        wait_until(lambda: samples(metrics).get(key), 10, "load latency observed", interval=0.01)
    got = samples(metrics)
    assert got[("streamserve_model_load_seconds_count", (("model", "tiny"),))] == 1
    assert got[("streamserve_model_version_state", (("model", "tiny"), ("version", "1")))] == 50
