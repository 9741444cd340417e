"""Pure parts of ``python -m benchmarks stream``: statistics, loss check, timeline, records,
summaries and the worker's timed predictor. No broker, no processes."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import orjson
import pytest

from benchmarks.stream_modes import MODES, image_records, parse_modes, tiny_records
from benchmarks.stream_outage import breaker_events
from benchmarks.stream_report import evaluate_goals, goals_text, model_summary, table
from benchmarks.stream_stats import (
    check_no_loss,
    end_to_end_latencies,
    expected_keys_below,
    metric_sum,
    parse_prometheus,
    summarize,
    throughput,
    timeline,
)
from benchmarks.stream_worker import TimedPredictor, WorkerSpec
from streamserve.predictors.base import Prediction

# --------------------------------------------------------------------------- statistics


def test_summarize_percentiles_interpolate_between_ranks() -> None:
    result = summarize([float(v) for v in range(1, 101)])
    assert result["count"] == 100
    assert result["mean"] == pytest.approx(50.5)
    assert result["p50"] == pytest.approx(50.5)
    assert result["p95"] == pytest.approx(95.05)
    assert result["p99"] == pytest.approx(99.01)
    assert result["max"] == 100.0


def test_summarize_of_nothing_is_empty_not_an_error() -> None:
    assert summarize([]) == {
        "count": 0,
        "mean": None,
        "max": None,
        "p50": None,
        "p95": None,
        "p99": None,
    }


def test_latencies_are_output_minus_input_timestamp_matched_by_key() -> None:
    inputs = {b"a": 1000, b"b": 1010}
    outputs = [(b"b", 1050), (b"a", 1003), (b"unknown", 2000)]
    assert end_to_end_latencies(inputs, outputs) == [40.0, 3.0]


def test_throughput_is_records_over_the_timestamp_span() -> None:
    assert throughput(10, start_ms=1000.0, end_ms=3000.0) == pytest.approx(5.0)


def test_throughput_falls_back_to_wall_time_without_a_span() -> None:
    assert throughput(3, start_ms=None, end_ms=5000.0, fallback_seconds=0.5) == 6.0
    assert throughput(3, start_ms=5000.0, end_ms=5000.0, fallback_seconds=1.5) == 2.0
    assert throughput(0, 1.0, 2.0) == 0.0
    assert throughput(3, None, None) == 0.0


# --------------------------------------------------------------------------- loss check


def test_loss_check_passes_when_every_input_has_one_output_or_dlq_record() -> None:
    report = check_no_loss([1, 2, 3, 4], [3, 1, 2], dlq_keys=[4])
    assert report.ok
    assert (report.expected, report.outputs, report.dlq, report.lost) == (4, 3, 1, 0)
    assert "0 lost" in report.line("run") and report.line("run").endswith("OK")


def test_loss_check_counts_lost_duplicate_and_unexpected_keys() -> None:
    report = check_no_loss(["a", "b", "c"], ["a", "a", "a", "x"])
    assert not report.ok
    assert report.lost == 2 and report.lost_examples == ["b", "c"]
    assert report.duplicates == 2
    assert report.unexpected == 1
    assert report.as_dict()["ok"] is False
    assert report.line("run").endswith("FAILED")


def test_expected_keys_are_the_committed_prefix_of_each_partition() -> None:
    keys = {0: ["a0", "a1", "a2"], 1: ["b0", "b1"], 2: ["c0"]}
    assert expected_keys_below(keys, {0: 2, 1: 5}) == ["a0", "a1", "b0", "b1"]


# --------------------------------------------------------------------------- timeline


def test_timeline_buckets_outputs_by_mode_inputs_and_latency() -> None:
    origin = 10_000.0
    outputs = [
        (origin + 100, "remote", 10.0),
        (origin + 400, "remote", 30.0),
        (origin + 600, "fallback", 50.0),
        (origin + 1600, "remote", 5.0),
        (origin - 50, "remote", 1.0),  # before the origin: ignored
    ]
    inputs = [origin + 10, origin + 20, origin + 700, origin - 100]
    buckets = timeline(outputs, inputs, origin, bucket_s=0.5)
    assert [b.start_s for b in buckets] == [0.0, 0.5, 1.0, 1.5]
    assert [b.outputs for b in buckets] == [2, 1, 0, 1]
    assert buckets[0].by_mode == {"remote": 2} and buckets[1].by_mode == {"fallback": 1}
    assert [b.inputs for b in buckets] == [2, 1, 0, 0]
    assert buckets[0].latency_p50_ms == pytest.approx(20.0)
    assert buckets[0].latency_max_ms == 30.0
    assert buckets[2].latency_p50_ms is None


def test_timeline_can_be_cut_at_a_given_end() -> None:
    buckets = timeline([(1000.0 + 5000, "remote", 1.0)], [], 1000.0, bucket_s=0.5, end_s=2.0)
    assert len(buckets) == 4 and sum(b.outputs for b in buckets) == 0


# --------------------------------------------------------------------------- metrics, logs


METRICS = """# HELP streamserve_stream_breaker_state Circuit breaker
streamserve_stream_breaker_state{target="grpc://127.0.0.1:1"} 2.0
streamserve_stream_breaker_state{target="grpc://127.0.0.1:2"} 0.0
streamserve_stream_records_out_total{mode="remote"} 10.0
streamserve_stream_records_out_total{mode="fallback"} 5.0
streamserve_stream_records_dlq_total{stage="decode,odd"} 1.0
streamserve_stream_consumer_paused 1.0
"""


def test_prometheus_text_is_parsed_and_summed_by_label() -> None:
    samples = parse_prometheus(METRICS)
    assert metric_sum(samples, "streamserve_stream_records_out_total") == 15.0
    assert metric_sum(samples, "streamserve_stream_records_out_total", mode="fallback") == 5.0
    assert metric_sum(samples, "streamserve_stream_records_dlq_total", stage="decode,odd") == 1.0
    assert metric_sum(samples, "streamserve_stream_consumer_paused") == 1.0
    assert metric_sum(samples, "streamserve_stream_breaker_state") == 2.0


def test_breaker_transitions_are_read_from_the_worker_log() -> None:
    log = "\n".join(
        [
            "100.250 WARNING streamserve.stream.invoker: breaker open target=grpc://h:1 failures=5",
            "101.500 INFO streamserve.stream.invoker: breaker half-open target=grpc://h:1",
            "101.600 INFO streamserve.stream: consumption paused reason=breaker-open",
            "103.000 INFO streamserve.stream.invoker: breaker closed target=grpc://h:1",
        ]
    )
    assert breaker_events(log, origin=100.0) == [
        (0.25, "open"),
        (1.5, "half-open"),
        (3.0, "closed"),
    ]


# --------------------------------------------------------------------------- modes, records


def test_modes_parse_in_order_without_duplicates() -> None:
    assert [m.name for m in parse_modes("grpc, embedded,grpc")] == ["grpc", "embedded"]
    with pytest.raises(ValueError, match="unknown mode"):
        parse_modes("embedded,carrier-pigeon")


def test_the_classic_baselines_make_one_blocking_call_per_record() -> None:
    for name in ("grpc-blocking", "grpc-channel-per-record"):
        mode = MODES[name]
        assert (mode.max_batch_size, mode.max_in_flight, mode.transport) == (1, 1, "grpc")
    assert MODES["grpc-channel-per-record"].per_call_channel
    assert MODES["grpc"].max_batch_size is None  # the processor's defaults
    assert not MODES["embedded"].remote and MODES["v2-grpc"].protocol == "v2"


def test_tiny_records_are_tensor_json_round_robin_over_partitions() -> None:
    records = tiny_records(5, partitions=2, prefix="l")
    assert [r.partition for r in records] == [0, 1, 0, 1, 0]
    assert [r.key for r in records] == [b"l0", b"l1", b"l2", b"l3", b"l4"]
    document = orjson.loads(records[3].value)
    assert document["id"] == 3
    assert np.asarray(document["inputs"]["x"]).shape == (1, 64)


def test_image_records_are_plain_paths_cycling_through_the_photos() -> None:
    paths = [Path("/photos/a.jpg"), Path("/photos/b.png")]
    records = image_records(paths, 3, partitions=4)
    assert [r.value for r in records] == [b"/photos/a.jpg", b"/photos/b.png", b"/photos/a.jpg"]
    assert [r.partition for r in records] == [0, 1, 2]


# --------------------------------------------------------------------------- summaries


def _run(mode: str, rps: float, p50: float, ok: bool = True) -> dict:
    loss = {"ok": ok}
    call = {"latency_ms": {"p50": 1.0, "p95": 2.0, "p99": 3.0}, "rows_per_call": 8.0}
    return {
        "mode": mode,
        "label": mode,
        "round": 0,
        "settings": {},
        "drain": {
            "throughput_rps": rps,
            "processed": 100,
            "records": 100,
            "complete": True,
            "model_call": call,
            "loss": loss,
            "cpu_us_per_record": {"processor": 10.0, "server": None, "broker": 5.0},
            "cpu_s": {"processor": 1.0, "server": None, "broker": 0.5},
        },
        "latency": {
            "e2e_samples_ms": [p50, p50],
            "visible_ms": {"p50": p50 + 100},
            "model_call": {"latency_ms": {"p50": 0.5}},
            "loss": loss,
        },
    }


def test_summary_ratios_goals_and_table() -> None:
    runs = [
        _run("embedded", 1000.0, 10.0),
        _run("grpc", 900.0, 20.0),
        _run("grpc-blocking", 50.0, 80.0),
        _run("embedded", 3000.0, 10.0),
    ]
    summary = model_summary(runs)
    assert summary["embedded"]["rounds"] == 2
    assert summary["embedded"]["throughput_rps"] == 2000.0  # median of the rounds
    assert summary["grpc"]["vs_embedded"] == {"throughput": 0.45, "e2e_p50": 2.0}
    goals = {g["goal"].split(":")[1].strip(): g for g in evaluate_goals({"tiny": summary})}
    blocking = goals["batched remote gRPC / per-record blocking gRPC"]
    assert blocking["value"] == 18.0 and blocking["met"]
    embedded_share = goals["batched remote gRPC / embedded"]
    assert not embedded_share["met"] and embedded_share["missed_by_fraction"] == pytest.approx(
        1 - 0.45 / 0.7, abs=1e-3
    )
    assert not goals["embedded records/s end to end"]["met"]
    text = table("tiny", summary)
    rows = [line for line in text.splitlines() if line.startswith("| ") and "mode" not in line]
    assert len(rows) == 3 and "| grpc | 900 | 0.45, 2.00 |" in text
    assert "MET" in goals_text(evaluate_goals({"tiny": summary}))


def test_a_failed_loss_check_shows_in_the_summary() -> None:
    summary = model_summary([_run("embedded", 10.0, 1.0, ok=False)])
    assert summary["embedded"]["no_loss"] is False
    assert "| NO |" in table("tiny", summary)


# --------------------------------------------------------------------------- worker


def test_worker_spec_round_trips_through_json(tmp_path: Path) -> None:
    spec = WorkerSpec(
        "h:1",
        "in",
        "out",
        "g",
        "tiny",
        str(tmp_path / "c.json"),
        targets=["grpc://h:2"],
        max_batch_size=1,
        per_call_channel=True,
    )
    path = spec.save(tmp_path / "spec.json")
    assert json.loads(path.read_text())["targets"] == ["grpc://h:2"]
    assert WorkerSpec.load(path) == spec


class _Doubler:
    mode = "remote"
    target = "grpc://h:1"

    def __init__(self) -> None:
        self.closed = False

    async def predict(self, inputs, signature_name=None):  # type: ignore[no-untyped-def]
        if signature_name == "bad":
            raise ValueError("rejected")
        return Prediction({"y": inputs["x"] * 2}, "m", 1)

    async def close(self) -> None:
        self.closed = True


def test_timed_predictor_records_every_call_and_forwards_results() -> None:
    inner = _Doubler()
    timed = TimedPredictor(inner)
    assert (timed.mode, timed.target) == ("remote", "grpc://h:1")

    async def scenario() -> None:
        result = await timed.predict({"x": np.ones((3, 2), np.float32)})
        np.testing.assert_array_equal(result.outputs["y"], np.full((3, 2), 2.0))
        with pytest.raises(ValueError):
            await timed.predict({"x": np.ones((1, 2), np.float32)}, "bad")
        await timed.close()

    asyncio.run(scenario())
    assert [(rows, ok) for _, _, rows, ok in timed.calls] == [(3, True), (1, False)]
    assert all(duration >= 0 for _, duration, _, _ in timed.calls)
    assert inner.closed
