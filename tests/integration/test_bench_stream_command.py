"""``python -m benchmarks stream`` end to end on the real broker: the command runs, writes
results.json and the figures, and its 0-lost checks pass. Timings are never asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
REPO_ROOT = Path(__file__).resolve().parents[2]


def _bench(kafka_bootstrap: str, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    command = [
        sys.executable,
        "-m",
        "benchmarks",
        "stream",
        "--model",
        "tiny",
        "--bootstrap-servers",
        kafka_bootstrap,
        "--out",
        str(out),
        "--no-progress",
        "--partitions",
        "2",
        *extra,
    ]
    return subprocess.run(
        command, capture_output=True, text=True, timeout=540, check=False, cwd=REPO_ROOT
    )


def test_embedded_and_grpc_modes_produce_results_and_lose_nothing(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    out = tmp_path / "bench"
    finished = _bench(
        kafka_bootstrap,
        out,
        "--records",
        "200",
        "--latency-records",
        "40",
        "--modes",
        "embedded,grpc",
    )
    assert finished.returncode == 0, finished.stdout + finished.stderr[-4000:]
    assert "0-lost check: passed" in finished.stdout

    results = json.loads((out / "results.json").read_text())
    assert results["no_records_lost"] is True
    summary = results["summary"]["tiny"]
    assert list(summary) == ["embedded", "grpc"]
    for mode, entry in summary.items():
        assert isinstance(entry["throughput_rps"], float), mode
        assert entry["e2e_ms"]["count"] == 40
        assert entry["no_loss"] is True
    runs = {run["mode"]: run for run in results["runs"]["tiny"]}
    for run in runs.values():
        assert run["drain"]["processed"] == 200 and run["drain"]["complete"]
        assert run["drain"]["loss"] == {
            **run["drain"]["loss"],
            "lost": 0,
            "duplicates": 0,
            "expected": 200,
            "ok": True,
        }
        assert run["drain"]["model_call"]["calls"] > 0
        assert run["drain"]["cpu_s"]["processor"] is not None
    assert runs["grpc"]["drain"]["cpu_s"]["server"] is not None
    assert runs["embedded"]["drain"]["cpu_s"]["server"] is None
    assert {g["goal"].split(":")[0] for g in results["goals"]} == {"tiny"}
    for name in ("throughput.png", "latency_cdf_tiny.png"):
        assert (out / name).stat().st_size > 0


def test_server_outage_loses_nothing_with_and_without_fallback(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    out = tmp_path / "outage"
    finished = _bench(
        kafka_bootstrap,
        out,
        "--records",
        "50",
        "--latency-records",
        "10",
        "--modes",
        "grpc",
        "--server-down-at",
        "2",
        "--server-down-for",
        "2",
        "--outage-recovery-s",
        "3",
        "--outage-rate",
        "100",
    )
    assert finished.returncode == 0, finished.stdout + finished.stderr[-4000:]
    results = json.loads((out / "results.json").read_text())
    without, with_fallback = results["outage"]
    assert (without["fallback"], with_fallback["fallback"]) == (False, True)
    for scenario in (without, with_fallback):
        assert scenario["loss"]["ok"], scenario["loss_line"]
        assert scenario["loss"]["dlq"] == 0
        assert scenario["timeline"] and scenario["breaker_samples"]
        assert "open" in {state for _, state in scenario["breaker_events"]}
        assert scenario["loss_line"] in finished.stdout
    assert "fallback" not in without["outputs_by_mode"]
    assert with_fallback["outputs_by_mode"].get("fallback", 0) > 0
    assert (out / "outage_timeline.png").stat().st_size > 0


def test_quix_peer_against_streamserve_checks_every_output(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """``--peers quix`` (Quix only: the Kafka Streams peer needs a cold Maven fetch of
    ~150 MB; its launcher logic is unit-tested). The first run creates the Quix peer's
    virtual environment under the streamserve cache (a pip download); later runs reuse it."""
    out = tmp_path / "peers"
    finished = _bench(
        kafka_bootstrap, out, "--records", "200", "--modes", "none", "--peers", "quix"
    )
    assert finished.returncode == 0, finished.stdout + finished.stderr[-4000:]
    assert "0-lost check: passed" in finished.stdout
    results = json.loads((out / "results.json").read_text())
    assert results["summary"] == {} and results["no_records_lost"] is True
    summary = results["peers"]["summary"]
    assert list(summary) == ["exactly-once", "at-least-once"]
    for guarantee, systems in summary.items():
        assert list(systems) == ["streamserve", "quix"], guarantee
        for system, entry in systems.items():
            assert entry["outputs_ok"] is True, (guarantee, system)
            assert entry["throughput_rps"] and entry["cpu_us_per_record"]["processor"]
        assert systems["quix"]["model_calls"] >= 200  # one call per record
    for run in results["peers"]["runs"]:
        assert run["drain"]["processed"] == 200 and run["values"]["checked"] == 200
        assert run["values"]["max_abs_diff"] <= 1e-4
    assert {g["goal"].split(":")[0] for g in results["peers"]["goals"]} == {
        "exactly-once",
        "at-least-once",
    }
    assert (out / "peers.png").stat().st_size > 0
    assert "| exactly-once | Quix Streams" in finished.stdout
