"""The peers of ``python -m benchmarks stream --peers``: parsing, the launcher's set-up and
command lines, the output value check, the summary, goals, table and plot. No broker; the
only processes are tiny stand-in "peers" (``python -c``)."""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from benchmarks import stream_peers
from benchmarks.stream_modes import tiny_records
from benchmarks.stream_peers import (
    COMMIT_INTERVAL_MS,
    PeerSetup,
    PeerSetupError,
    StreamPeerProcess,
    expected_outputs,
    kstreams_jar,
    parse_guarantees,
    parse_peers,
    peer_calls,
    quix_python,
    source_digest,
    thread_cpu_seconds,
)
from benchmarks.stream_peers_report import (
    has_steady,
    peer_goals,
    peer_goals_text,
    peers_summary,
    peers_table,
    steady_table,
)
from benchmarks.stream_run import BenchContext, SteadyWindow
from benchmarks.stream_stats import check_values

# --------------------------------------------------------------------------- parsing


def test_peers_parse_in_order_without_duplicates() -> None:
    assert parse_peers("kafka-streams, quix,kafka-streams") == ["kafka-streams", "quix"]
    with pytest.raises(ValueError, match="flink"):
        parse_peers("quix,flink")
    with pytest.raises(ValueError):
        parse_peers(" , ")


def test_guarantees_parse_and_reject_unknown_names() -> None:
    assert parse_guarantees("at-least-once,exactly-once") == ["at-least-once", "exactly-once"]
    with pytest.raises(ValueError, match="at-most-once"):
        parse_guarantees("at-most-once")


# --------------------------------------------------------------------------- set-up


def test_peer_commands_take_the_same_arguments_and_commit_interval() -> None:
    setup = PeerSetup(quix_python=Path("/venv/bin/python"), kstreams_jar=Path("/c/peer.jar"))
    topics = ("in", "out", "group")
    args = ["b:9092", "in", "out", "group", "/m/model.onnx", "at-least-once",
            str(COMMIT_INTERVAL_MS)]  # fmt: skip
    quix = setup.command("quix", topics, "b:9092", Path("/m/model.onnx"), "at-least-once")
    assert quix == ["/venv/bin/python", str(stream_peers.QUIX_DIR / "app.py"), *args]
    java = setup.command("kafka-streams", topics, "b:9092", Path("/m/model.onnx"), "at-least-once")
    assert java[0] == "java" and java[-8:] == ["/c/peer.jar", *args]
    with pytest.raises(ValueError):
        setup.command("flink", topics, "b:9092", Path("/m/model.onnx"), "exactly-once")


def test_the_peer_sources_exist_where_the_launcher_looks() -> None:
    assert (stream_peers.QUIX_DIR / "app.py").is_file()
    assert "quixstreams==" in (stream_peers.QUIX_DIR / "requirements.txt").read_text()
    assert (stream_peers.KSTREAMS_DIR / "pom.xml").is_file()
    assert list((stream_peers.KSTREAMS_DIR / "src").rglob("App.java"))


def _kstreams_sources(root: Path) -> Path:
    (root / "src" / "main").mkdir(parents=True)
    (root / "pom.xml").write_text("<project/>")
    (root / "src" / "main" / "App.java").write_text("class App {}")
    return root


def test_source_digest_changes_with_any_source_and_nothing_else(tmp_path: Path) -> None:
    root = _kstreams_sources(tmp_path / "k")
    first = source_digest(root)
    (root / "target").mkdir()
    (root / "target" / "out.jar").write_text("built")
    assert source_digest(root) == first  # build output is not a source
    (root / "src" / "main" / "App.java").write_text("class App { }")
    assert source_digest(root) != first


def test_a_jar_built_from_the_same_sources_is_reused_without_maven(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = _kstreams_sources(tmp_path / "k")
    monkeypatch.setattr(stream_peers, "KSTREAMS_DIR", root)
    cache = tmp_path / "cache"
    jar = cache / "kstreams" / f"kstreams-peer-{source_digest(root)[:16]}.jar"
    jar.parent.mkdir(parents=True)
    jar.write_text("jar")

    def no_build(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("maven must not run")

    monkeypatch.setattr(stream_peers, "_run_step", no_build)
    assert kstreams_jar(cache, tmp_path / "log") == jar


def test_building_the_jar_copies_the_sources_and_drops_stale_jars(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = _kstreams_sources(tmp_path / "k")
    monkeypatch.setattr(stream_peers, "KSTREAMS_DIR", root)
    monkeypatch.setattr(stream_peers.shutil, "which", lambda tool: f"/usr/bin/{tool}")
    cache = tmp_path / "cache"
    stale = cache / "kstreams" / "kstreams-peer-0000000000000000.jar"
    stale.parent.mkdir(parents=True)
    stale.write_text("old")
    seen: list[list[str]] = []

    def fake_maven(command: list[str], log: Path, what: str, cwd: Path | None = None) -> None:
        assert cwd is not None and (cwd / "src" / "main" / "App.java").is_file()
        seen.append(command)
        (cwd / "target").mkdir()
        (cwd / "target" / "kstreams-peer.jar").write_text("fresh")

    monkeypatch.setattr(stream_peers, "_run_step", fake_maven)
    jar = kstreams_jar(cache, tmp_path / "log")
    assert seen and seen[0][:2] == ["mvn", "-B"]
    assert jar.read_text() == "fresh" and not stale.exists()
    assert not (cache / "kstreams" / "build").exists()


def test_a_missing_build_tool_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(stream_peers, "KSTREAMS_DIR", _kstreams_sources(tmp_path / "k"))
    monkeypatch.setattr(stream_peers.shutil, "which", lambda tool: None)
    with pytest.raises(PeerSetupError, match="mvn"):
        kstreams_jar(tmp_path / "cache", tmp_path / "log")


def test_the_quix_environment_is_reused_while_its_requirements_match(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    steps: list[str] = []

    def fake_step(command: list[str], log: Path, what: str, cwd: Path | None = None) -> None:
        steps.append(what)
        if what == "python -m venv":
            python = Path(command[-1]) / "bin" / "python"
            python.parent.mkdir(parents=True)
            python.write_text("")

    monkeypatch.setattr(stream_peers, "_run_step", fake_step)
    cache = tmp_path / "cache"
    python = quix_python(cache, tmp_path / "log")
    assert python == cache / "quix-venv" / "bin" / "python"
    assert steps == ["python -m venv", "pip install (Quix peer)"]
    assert quix_python(cache, tmp_path / "log") == python
    assert len(steps) == 2  # reused
    (cache / "quix-venv" / ".streamserve-requirements").write_text("quixstreams==0.1\n")
    quix_python(cache, tmp_path / "log")
    assert len(steps) == 4  # stale pins: created again


def test_a_failed_set_up_step_raises_with_the_log(tmp_path: Path) -> None:
    command = [sys.executable, "-c", "print('no such package'); raise SystemExit(3)"]
    with pytest.raises(PeerSetupError, match="no such package"):
        stream_peers._run_step(command, tmp_path / "step.log", "pip install")


# --------------------------------------------------------------------------- peer processes

FAKE_PEER = """
import os, signal, sys, time
print("peer ready: fake", flush=True)
print("peer first call at 1700000000123", flush=True)
print("pythonpath=" + os.environ.get("PYTHONPATH", "<unset>"), flush=True)
signal.signal(signal.SIGTERM, lambda *a: (print("peer model calls: 42", flush=True),
                                          sys.exit(0)))
while True:
    time.sleep(0.05)
"""


def test_a_peer_process_is_ready_at_its_line_and_reports_its_calls(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTHONPATH", "/checkout/src")
    peer = StreamPeerProcess([sys.executable, "-c", FAKE_PEER], tmp_path / "p.log", "fake")
    peer.start()
    try:
        peer.wait_ready(30)
        assert peer.ready_line == "peer ready: fake"
        assert peer.cpu_breakdown() == {}  # not a JVM
    finally:
        assert peer.stop() == 0
    summary, first_ms = peer.calls()
    assert first_ms == 1700000000123.0
    assert summary["calls"] == 42 and summary["rows_per_call"] == 1.0
    assert "pythonpath=<unset>" in peer.log_text()  # the checkout stays out of the venv


def test_peer_calls_without_the_lines_are_unknown() -> None:
    summary, first_ms = peer_calls("peer ready: x\n")
    assert first_ms is None and summary["calls"] is None and summary["rows_per_call"] is None


def test_thread_cpu_is_summed_over_the_named_threads() -> None:
    stop = threading.Event()

    def spin() -> None:
        while not stop.is_set():
            sum(range(1000))

    worker = threading.Thread(target=spin)
    worker.start()
    try:
        name = Path(f"/proc/self/task/{worker.native_id}/comm").read_text().strip()
        stop.wait(0.2)
        assert thread_cpu_seconds(os.getpid(), [name]) is not None
        assert thread_cpu_seconds(os.getpid(), ["no thread has this name"]) == 0.0
    finally:
        stop.set()
        worker.join()
    assert thread_cpu_seconds(2**22 + 12345, [name]) is None


# --------------------------------------------------------------------------- value check


def _output(key: bytes, values: list[list[float]]) -> tuple[bytes, bytes]:
    return key, orjson.dumps({"id": 1, "outputs": {"y": values}})


def test_outputs_equal_to_the_model_within_the_tolerance_pass() -> None:
    expected = {b"a": np.array([1.0, 2.0], np.float32), b"b": np.array([0.0, 0.5], np.float32)}
    outputs = [_output(b"a", [[1.00005, 2.0]]), _output(b"b", [[0.0, 0.5]]),
               _output(b"other", [[9.0]])]  # fmt: skip
    report = check_values(outputs, expected)
    assert report["ok"] and report["checked"] == 2 and report["wrong"] == 0
    assert report["max_abs_diff"] == pytest.approx(5e-5, abs=1e-6)


def test_wrong_unreadable_or_misshapen_outputs_fail_the_check() -> None:
    expected = {k: np.array([1.0, 2.0], np.float32) for k in (b"a", b"b", b"c", b"d")}
    outputs = [
        _output(b"a", [[1.0, 2.1]]),
        (b"b", b"not json"),
        _output(b"c", [[1.0]]),
        (b"d", orjson.dumps({"outputs": {"z": [[1.0, 2.0]]}})),
    ]
    report = check_values(outputs, expected)
    assert not report["ok"] and report["wrong"] == 4
    assert any("differs by 0.1" in e for e in report["examples"])
    assert any("1 values, expected 2" in e for e in report["examples"])


def test_no_checked_output_is_not_a_pass() -> None:
    assert check_values([], {b"a": np.zeros(2)})["ok"] is False


def test_expected_outputs_are_the_models_answer_per_key(tmp_path: Path) -> None:
    from streamserve.models.toy import build_tiny

    model = build_tiny(tmp_path / "tiny" / "1")
    records = tiny_records(5, partitions=2, prefix="k")
    expected = expected_outputs(model, records)
    assert sorted(expected) == [f"k{i}".encode() for i in range(5)]
    x = np.asarray(orjson.loads(records[3].value)["inputs"]["x"], np.float32)
    import onnxruntime as ort

    (single,) = ort.InferenceSession(str(model)).run(None, {"x": x})
    np.testing.assert_allclose(expected[b"k3"], single[0], atol=1e-5)
    assert check_values([(b"k3", orjson.dumps({"outputs": {"y": single}},
                                               option=orjson.OPT_SERIALIZE_NUMPY))],
                        expected)["ok"]  # fmt: skip


# --------------------------------------------------------------------------- report


def _run(system: str, guarantee: str, rps: float, cpu: float, ok: bool = True) -> dict:
    return {
        "system": system,
        "label": f"{system} label",
        "guarantee": guarantee,
        "round": 0,
        "drain": {
            "throughput_rps": rps,
            "processed": 100,
            "records": 100,
            "complete": True,
            "cpu_us_per_record": {"processor": cpu, "broker": 20.0},
            "model_call": {"calls": 100, "rows_per_call": 1.0},
            "loss": {"ok": True},
        },
        "values": {"ok": ok, "max_abs_diff": 1e-7},
    }


def _runs() -> list[dict]:
    return [
        _run("streamserve", "exactly-once", 3000.0, 20.0),
        _run("quix", "exactly-once", 1000.0, 100.0),
        _run("kafka-streams", "exactly-once", 2000.0, 150.0),
        _run("streamserve", "exactly-once", 5000.0, 30.0),  # round 2: medians
        _run("streamserve", "at-least-once", 4000.0, 50.0),
        _run("quix", "at-least-once", 4000.0, 100.0, ok=False),
    ]


def test_peer_summary_takes_medians_and_ratios_streamserve_over_each_system() -> None:
    summary = peers_summary(_runs())
    assert list(summary) == ["exactly-once", "at-least-once"]
    eos = summary["exactly-once"]
    assert list(eos) == ["streamserve", "quix", "kafka-streams"]
    assert eos["streamserve"]["throughput_rps"] == 4000.0
    assert eos["streamserve"]["cpu_us_per_record"]["processor"] == 25.0
    assert eos["quix"]["streamserve_vs_this"] == {"throughput": 4.0, "cpu_us_per_record": 0.25}
    assert eos["kafka-streams"]["streamserve_vs_this"]["throughput"] == 2.0
    assert summary["at-least-once"]["quix"]["outputs_ok"] is False


def test_peer_goals_are_met_or_missed_by_how_much() -> None:
    goals = {g["goal"]: g for g in peer_goals(peers_summary(_runs()))}
    assert goals["exactly-once: streamserve / quix processor CPU µs/record"]["met"] is True
    assert goals["exactly-once: streamserve / quix records/s"]["met"] is True
    assert goals["exactly-once: streamserve / kafka-streams records/s"]["met"] is True
    cpu = goals["at-least-once: streamserve / quix processor CPU µs/record"]
    assert cpu["met"] is False and cpu["missed_by_fraction"] == pytest.approx(
        0.5 / 0.33 - 1, abs=1e-3
    )
    rps = goals["at-least-once: streamserve / quix records/s"]
    assert rps["met"] is False and rps["missed_by_fraction"] == pytest.approx(1 - 1 / 1.5, abs=1e-3)
    assert "at-least-once: streamserve / kafka-streams records/s" not in goals  # not measured
    text = peer_goals_text(list(goals.values()))
    assert "MET" in text and "MISSED by 33.3%" in text


def test_peer_table_has_a_row_per_guarantee_and_system() -> None:
    text = peers_table(peers_summary(_runs()))
    rows = [line for line in text.splitlines() if line.startswith("| ") and "system" not in line]
    assert len(rows) == 5
    assert "| exactly-once | quix label | 1,000 | 100 | 20 | 1.0 | 4.00, 0.25 | yes |" in text
    assert "| at-least-once | quix label |" in text and text.rstrip().endswith("| NO |")


def test_peer_table_shows_the_jit_share_when_measured() -> None:
    runs = _runs()
    runs[2]["drain"]["cpu_us_per_record"]["processor_jit"] = 60.0
    assert "| 150 (60) |" in peers_table(peers_summary(runs))


def test_peer_bars_are_written_next_to_the_results(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from benchmarks.stream_plots import peer_bars

    path = peer_bars(tmp_path / "peers.png", peers_summary(_runs()), "title")
    assert path.stat().st_size > 0


def test_steady_figures_are_summarised_tabled_and_compared() -> None:
    runs = _runs()
    for run, (rps, cpu) in zip(runs, [(6000, 15), (2000, 90), (4000, 60)], strict=False):
        run["drain"]["steady"] = {
            "throughput_rps": float(rps),
            "cpu_us_per_record": {"processor": float(cpu)},
        }
    runs[2]["drain"]["steady"]["cpu_us_per_record"]["processor_jit"] = 20.0
    summary = peers_summary(runs)
    eos = summary["exactly-once"]
    assert eos["streamserve"]["steady"]["throughput_rps"] == 6000.0  # round 2 had none
    assert eos["quix"]["steady"]["streamserve_vs_this"] == {
        "throughput": 3.0,
        "cpu_us_per_record": pytest.approx(0.167, abs=1e-3),
    }
    assert has_steady(summary)
    text = steady_table(summary)
    assert "| exactly-once | kafka-streams label | 4,000 | 60 (20) | 1.50, 0.25 |" in text
    assert "| at-least-once | quix label | - | - | -, - |" in text
    assert not has_steady(peers_summary(_runs()))


class _Self:
    """A stand-in processor: this test process."""

    pid = os.getpid()


def test_the_steady_window_starts_once_enough_records_are_committed() -> None:
    ctx = BenchContext("b:9092", None, Path("."), "run", 1, 1, 1.0, 1.0, progress=False)
    window = SteadyWindow(100, _Self(), ctx)  # type: ignore[arg-type]
    window.progress(40)
    assert window.start is None
    window.progress(120)
    assert window.start is not None and window.start[2] == 120
    window.progress(150)
    assert window.start[2] == 120  # the first crossing counts
    snapshot, began, _ = window.start
    after = {**snapshot, "processor": (snapshot["processor"] or 0) + 0.5}
    result = window.result(after, began + 2.0, 520)
    assert result["records"] == 400 and result["throughput_rps"] == 200.0
    assert result["cpu_us_per_record"]["processor"] == pytest.approx(1250.0, abs=1.0)
    assert SteadyWindow(100, _Self(), ctx).result(after, 1.0, 50)["throughput_rps"] is None  # type: ignore[arg-type]
