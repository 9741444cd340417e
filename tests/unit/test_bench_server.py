"""Pure parts of ``python -m benchmarks server``: statistics, parsers, ratios, table, JSON shape.

Nothing here starts a process or measures time."""

from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest

from benchmarks import common, loadtools, report
from benchmarks import heavy as bench_heavy
from benchmarks import server as bench


def test_percentile_interpolates_like_numpy() -> None:
    values = [5.0, 1.0, 4.0, 2.0, 3.0, 10.0]
    for q in (0, 25, 50, 90, 99, 100):
        assert common.percentile(values, q) == pytest.approx(np.percentile(values, q))
    assert math.isnan(common.percentile([], 50))
    assert common.percentile([7.0], 99) == 7.0
    with pytest.raises(ValueError):
        common.percentile(values, 101)


def test_ratio_refuses_missing_and_zero() -> None:
    assert common.ratio(3.0, 2.0) == 1.5
    assert common.ratio(None, 2.0) is None
    assert common.ratio(1.0, 0.0) is None
    assert common.ratio(math.nan, 1.0) is None


def test_split_concurrency_spreads_clients() -> None:
    assert common.split_concurrency(16, 2) == [8, 8]
    assert common.split_concurrency(5, 2) == [3, 2]
    assert common.split_concurrency(1, 4) == [1]
    assert sum(common.split_concurrency(17, 3)) == 17


def test_load_result_rates_and_json() -> None:
    result = common.LoadResult(requests=500, errors=1, seconds=2.0, p50_ms=1.0, p99_ms=3.0,
                               server_cpu_s=0.25)  # fmt: skip
    assert result.rps == 250
    assert result.server_cpu_ms_per_request == pytest.approx(0.5)
    data = result.to_json()
    assert data["rps"] == 250 and data["server_cpu_ms_per_request"] == pytest.approx(0.5)
    assert common.LoadResult(0, 0, 1.0, 0, 0, server_cpu_s=1.0).server_cpu_ms_per_request is None


def test_merge_samples_pools_latencies() -> None:
    samples = [
        common.LoadSample(requests=2, latencies_ms=[1.0, 3.0], cpu_s=0.5),
        common.LoadSample(requests=2, errors=1, latencies_ms=[2.0, 4.0], first_error="boom"),
    ]
    merged = common.merge_samples(samples, seconds=2.0, tool="t")
    assert (merged.requests, merged.errors, merged.first_error) == (4, 1, "boom")
    assert merged.p50_ms == pytest.approx(2.5)
    assert merged.client_cpu_s == 0.5


def test_proc_stat_cpu_handles_odd_command_names() -> None:
    fields = ["S", "1", "1", "1", "0", "-1", "0", "0", "0", "0", "0", "250", "150"]
    text = "4242 (a) b (c)) " + " ".join(fields) + " 0 0 20 0 1 0"
    assert common.parse_proc_stat_cpu(text, 100) == pytest.approx(4.0)
    assert common.process_tree_cpu_seconds(os.getpid()) > 0


def test_wrk_summary_is_parsed() -> None:
    text = ("Running 5s test\n  2 threads and 16 connections\n"
            'WRKJSON {"requests": 1000, "duration_us": 5000000, "socket_errors": 0, '
            '"status_errors": 2, "p50_us": 1500, "p99_us": 9000}\n')  # fmt: skip
    summary = loadtools.parse_wrk_output(text)
    assert summary["requests"] == 1000 and summary["p99_us"] == 9000
    with pytest.raises(RuntimeError, match="no summary"):
        loadtools.parse_wrk_output("connection refused")


def test_h2load_summary_and_log_are_parsed() -> None:
    text = ("finished in 6.00s, 1060.60 req/s, 351.72KB/s\n"
            "requests: 5303 total, 5303 started, 5303 done, 5300 succeeded, 3 failed, "
            "0 errored, 0 timeout\n"
            "traffic: 1.22MB (1277892) total, 17.55KB (17976) headers (space savings 96.23%), "
            "1.62MB (1696896) data\n")  # fmt: skip
    summary = loadtools.parse_h2load_output(text)
    assert summary["rps"] == pytest.approx(1060.6)
    assert (summary["succeeded"], summary["errors"]) == (5300, 3)
    assert summary["data_bytes"] == 1696896
    log = "100\t200\t1500\n90\t200\t99000\n200\t200\t2500\n300\t503\t100\n"
    assert loadtools.parse_h2load_log(log, since_us=100) == [1.5, 2.5]
    with pytest.raises(RuntimeError):
        loadtools.parse_h2load_output("")


def test_grpc_frame_prefixes_length() -> None:
    assert loadtools.grpc_frame(b"abc") == b"\x00\x00\x00\x00\x03abc"


def test_nan_to_none_and_write_json(tmp_path: Path) -> None:
    data = {"a": math.nan, "b": [1.0, math.nan], "c": {"d": (math.nan,)}}
    cleaned = common.nan_to_none(data)
    assert cleaned == {"a": None, "b": [1.0, None], "c": {"d": [None]}}
    path = common.write_json(tmp_path / "x" / "r.json", cleaned)
    assert json.loads(path.read_text()) == cleaned


def test_protocol_and_batch_options() -> None:
    assert bench.parse_protocols("all") == list(bench.SCENARIOS)
    assert bench.parse_protocols("grpc") == ["tf-grpc", "v2-grpc"]
    assert bench.parse_protocols("v2-rest,tf-grpc,grpc") == ["tf-grpc", "v2-grpc", "v2-rest"]
    with pytest.raises(argparse.ArgumentTypeError):
        bench.parse_protocols("soap")
    assert bench.parse_batch_sizes("32,1,1") == [1, 32]
    for bad in ("", "0", "x"):
        with pytest.raises(argparse.ArgumentTypeError):
            bench.parse_batch_sizes(bad)


def test_requests_round_trip_through_our_protos() -> None:
    from streamserve.protos.tfs import predict_pb2
    from streamserve.protos.v2 import grpc_service_pb2 as pb
    from streamserve.tensors import tensor_proto_to_numpy

    x = bench.tiny_inputs(3)
    v2 = pb.ModelInferRequest.FromString(bench.v2_grpc_request("tiny", {"x": x}, "tensor"))
    assert v2.model_name == "tiny" and list(v2.inputs[0].shape) == [3, 64]
    assert (
        v2.inputs[0].datatype == "FP32" and v2.parameters["signature_name"].string_param == "tensor"
    )
    assert np.array_equal(np.frombuffer(v2.raw_input_contents[0], np.float32).reshape(3, 64), x)
    tf = predict_pb2.PredictRequest.FromString(bench.tf_grpc_request("tiny", {"x": x}))
    assert tf.model_spec.name == "tiny"
    assert np.array_equal(tensor_proto_to_numpy(tf.inputs["x"]), x)
    assert json.loads(bench.tf_rest_body({"x": x}))["instances"][2] == pytest.approx(x[2].tolist())
    body = json.loads(bench.v2_rest_body({"x": x}))
    assert body["inputs"][0]["shape"] == [3, 64] and len(body["inputs"][0]["data"]) == 192


def test_answers_are_decoded_from_every_wire_format() -> None:
    from streamserve.protos.v2 import grpc_service_pb2 as pb

    y = np.arange(6, dtype=np.float32).reshape(2, 3)
    raw = pb.ModelInferResponse()
    raw.outputs.add(name="y", datatype="FP32", shape=[2, 3])
    raw.raw_output_contents.append(y.tobytes())
    typed = pb.ModelInferResponse()
    typed.outputs.add(name="y", datatype="FP32", shape=[2, 3]).contents.fp32_contents.extend(
        y.ravel().tolist()
    )
    for response in (raw, typed):
        assert np.array_equal(bench.decode_answer("v2-grpc", response.SerializeToString()), y)
    tf_rest = json.dumps({"predictions": y.tolist()}).encode()
    assert np.array_equal(bench.decode_answer("tf-rest", tf_rest), y)
    v2_rest = json.dumps({"outputs": [{"name": "y", "shape": [2, 3], "datatype": "FP32",
                                       "data": y.ravel().tolist()}]}).encode()  # fmt: skip
    assert np.array_equal(bench.decode_answer("v2-rest", v2_rest), y)
    assert bench.rest_url("http://h:1", "m", "tf-rest") == "http://h:1/v1/models/m:predict"
    assert bench.rest_url("http://h:1", "m", "v2-rest") == "http://h:1/v2/models/m/infer"


def _record(target: str, scenario: str, batch: int, rps: float, cpu: float | None,
            round_index: int = 0) -> dict[str, object]:  # fmt: skip
    protocol, transport = scenario.split("-")
    return {"target": target, "protocol": protocol, "transport": transport, "batch": batch,
            "round": round_index, "rps": rps, "p50_ms": 1.0, "p99_ms": 2.0,
            "server_cpu_ms_per_request": cpu, "client_cpu_ms_per_request": None, "errors": 0,
            "first_error": "", "tool": "h2load"}  # fmt: skip


RECORDS = [
    _record("streamserve", "v2-grpc", 1, 3000, 0.20),
    _record("streamserve", "v2-grpc", 1, 3400, 0.30, round_index=1),
    _record("mlserver", "v2-grpc", 1, 2000, 0.50),
    _record("minimal", "v2-grpc", 1, 4000, 0.15),
    _record("minimal-uvloop", "v2-grpc", 1, 5000, 0.12),
    _record("streamserve", "tf-grpc", 1, 2800, 0.22),
    _record("streamserve", "v2-rest", 1, 1500, 0.40),
    _record("mlserver", "v2-rest", 1, 1000, math.nan),
]
HEAVY = {"raw": {"images_per_s": 100.0, "batch": 16, "p50_ms": 1, "p99_ms": 2},
         "server": {"images_per_s": 85.0, "p50_ms": 3, "p99_ms": 4, "detail": "d"}}  # fmt: skip


def test_aggregate_takes_medians_over_rounds() -> None:
    rows = report.aggregate(RECORDS)
    ours = report.find_row(rows, "streamserve", "v2-grpc", 1)
    assert ours is not None
    assert ours["rps"] == 3200 and ours["rounds"] == 2 and ours["rows_per_s"] == 3200
    assert ours["server_cpu_ms_per_request"] == pytest.approx(0.25)
    theirs_rest = report.find_row(rows, "mlserver", "v2-rest", 1)
    assert theirs_rest is not None and theirs_rest["server_cpu_ms_per_request"] is None
    assert [row["target"] for row in rows[:3]] == ["streamserve", "streamserve", "mlserver"]


def test_ratios_against_goals() -> None:
    ratios = report.compute_ratios(report.aggregate(RECORDS), [1], HEAVY)
    by_name = {(item.name, item.scenario): item for item in ratios}
    vs_mlserver = by_name[("req/s streamserve / MLServer", "v2-grpc")]
    assert vs_mlserver.value == pytest.approx(1.6) and vs_mlserver.passed is True
    cpu = by_name[("server CPU per request streamserve / MLServer", "v2-grpc")]
    assert cpu.value == pytest.approx(0.5) and cpu.passed is True and cpu.goal == "<= 0.6"
    minimal = by_name[("req/s streamserve / minimal grpc.aio", "v2-grpc")]
    assert minimal.value == pytest.approx(0.8) and minimal.passed is False
    on_uvloop = by_name[("req/s streamserve / minimal grpc.aio on uvloop", "v2-grpc")]
    assert on_uvloop.value == pytest.approx(0.64) and on_uvloop.passed is False
    cpu_bound = by_name[("srv CPU/req minimal V2 on uvloop / streamserve", "v2-grpc")]
    assert cpu_bound.value == pytest.approx(0.12 / 0.25) and cpu_bound.passed is None
    rest = by_name[("req/s streamserve / MLServer", "v2-rest")]
    assert rest.value == pytest.approx(1.5) and rest.passed is None
    rest_cpu = by_name[("server CPU per request streamserve / MLServer", "v2-rest")]
    assert rest_cpu.value is None and rest_cpu.passed is None
    heavy = [item for item in ratios if item.scenario == "heavy"]
    assert heavy[0].value == pytest.approx(0.85) and heavy[0].passed is True


def test_tables_show_every_row_and_ratio() -> None:
    rows = report.aggregate(RECORDS)
    raw = {1: {"calls_per_s": 50000.0, "rows_per_s": 50000.0, "p50_ms": 0.01, "p99_ms": 0.05}}
    table = report.format_rows(rows, raw)
    assert len(table.splitlines()) == 2 + len(rows) + 1
    assert "raw onnxruntime" in table and "3,200" in table
    ratios = report.format_ratios(report.compute_ratios(rows, [1], HEAVY))
    assert "NO" in ratios and "yes" in ratios
    assert "85.0" in report.format_heavy(HEAVY)
    assert report.format_heavy(None) == "heavy model: not run"


def test_results_document_shape(tmp_path: Path) -> None:
    raw = {1: {"calls_per_s": 50000.0, "rows_per_s": 50000.0, "p50_ms": 0.01, "p99_ms": 0.05}}
    document = common.nan_to_none(
        report.results_document({"concurrency": 16}, RECORDS, raw, HEAVY, ["a note"])
    )
    assert set(document) == {"meta", "raw_onnxruntime", "rows", "runs", "ratios", "heavy", "notes"}
    assert list(document["raw_onnxruntime"]) == ["1"]
    assert len(document["runs"]) == len(RECORDS)
    assert {"name", "scenario", "batch", "value", "goal", "passed"} <= set(document["ratios"][0])
    json.dumps(document, allow_nan=False)  # valid JSON, no NaN
    png = report.plot_results(tmp_path / "results.png", document)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_cli_registers_server() -> None:
    from benchmarks.__main__ import build_parser

    args = build_parser().parse_args(
        ["server", "--concurrency", "4", "--no-heavy", "--skip-mlserver"]
    )
    assert args.concurrency == 4 and args.heavy is False and args.skip_mlserver is True
    assert args._run is bench.run


def test_mean_batch_size_from_prometheus_text() -> None:
    text = "\n".join([
        "# HELP streamserve_batch_size Rows per runtime call",
        'streamserve_batch_size_bucket{model="imagenet",version="1",le="1.0"} 2.0',
        'streamserve_batch_size_sum{model="imagenet",version="1"} 150.0',
        'streamserve_batch_size_count{model="imagenet",version="1"} 10.0',
        'streamserve_batch_size_sum{model="other",version="1"} 999.0',
        'streamserve_batch_size_count{model="other",version="1"} 1.0',
    ])  # fmt: skip
    assert bench_heavy.mean_batch_size(text, "imagenet") == 15.0
    assert bench_heavy.mean_batch_size(text, "missing") is None


def test_workers_and_tf_predict_ratios_of_issue_16() -> None:
    records = [
        *RECORDS,
        _record(report.WORKERS_TARGET, "v2-grpc", 1, 5100, 0.2),
        _record(report.WORKERS_TARGET, "v2-rest", 1, 2400, 0.4),
    ]
    ratios = report.compute_ratios(report.aggregate(records), [1], HEAVY)
    by_name = {(item.name, item.scenario): item for item in ratios}
    grpc = by_name[("req/s streamserve --workers 2 / --workers 1", "v2-grpc")]
    assert grpc.value == pytest.approx(5100 / 3200) and grpc.passed is False
    rest = by_name[("req/s streamserve --workers 2 / --workers 1", "v2-rest")]
    assert rest.value == pytest.approx(1.6) and rest.goal == ">= 1.7"
    on_uvloop = by_name[("req/s streamserve TF Predict / minimal V2 on uvloop", "tf-grpc")]
    assert on_uvloop.value == pytest.approx(0.56) and on_uvloop.goal == ">= 0.8"


def test_the_workers_target_runs_v2_at_batch_one_only() -> None:
    from benchmarks.server import Plan

    targets = {"streamserve": None, report.WORKERS_TARGET: None, "minimal": None}
    plan = Plan(["v2-grpc", "tf-grpc"], [1, 32], targets, use_wrk=True, use_h2load=True)
    assert plan.targets_for("v2-grpc", 1) == ["streamserve", report.WORKERS_TARGET, "minimal"]
    assert plan.targets_for("v2-grpc", 32) == ["streamserve", "minimal"]
    assert plan.targets_for("tf-grpc", 1) == ["streamserve"]


def test_profile_summary_counts_own_and_inclusive_time() -> None:
    from benchmarks.profile import format_profile

    raw = (
        "main (app.py:1);infer (v2_grpc.py:10);decode (v2.py:5) 3\n"
        "main (app.py:1);infer (v2_grpc.py:12) 1\n"
    )
    text = format_profile(raw)
    assert text.startswith("4 samples holding the GIL")
    assert " 75.0%  decode (v2.py)" in text and " 25.0%  infer (v2_grpc.py)" in text
    assert "100.0%  infer (v2_grpc.py)" in text  # lines of one function merged
