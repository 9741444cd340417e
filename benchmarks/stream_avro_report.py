"""The Avro section of ``bench stream --workload avro``: summary, the issue's targets, a table.

Pure functions of the raw runs from :func:`benchmarks.stream_avro.run_avro` (no Kafka, no
processes). The summary is :func:`benchmarks.stream_peers_report.peers_summary`'s
(medians over rounds; ratios streamserve / this, where ``streamserve`` is the Avro path),
plus the machine's conditions before each run. So the tensor-JSON row's ratio is Avro's
CPU per record over tensor JSON's, for the same model and records.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from benchmarks import stream_conditions
from benchmarks.stream_avro import QUIX, STREAMSERVE, STREAMSERVE_JSON
from benchmarks.stream_peers_report import peers_summary

# Issue 23's targets: (system, metric, op, target) for streamserve Avro / that system.
TARGETS: tuple[tuple[str, str, str, float], ...] = (
    (QUIX, "cpu_us_per_record", "<=", 0.5),
    (QUIX, "throughput", ">=", 1.5),
    (STREAMSERVE_JSON, "cpu_us_per_record", "<=", 1.0),
)
WHAT = {"cpu_us_per_record": "processor CPU µs/record", "throughput": "records/s"}
NAMES = {QUIX: "Quix Streams (Avro serdes)", STREAMSERVE_JSON: "streamserve tensor JSON"}


def avro_summary(runs: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """``{guarantee: {system: summary}}`` with each system's per-run conditions."""
    summary = peers_summary(runs)
    for guarantee, systems in summary.items():
        for system, entry in systems.items():
            mine = [r for r in runs if r["guarantee"] == guarantee and r["system"] == system]
            entry["conditions"] = [r.get("conditions") or {} for r in mine]
            entry["busy_runs"] = sum(1 for c in entry["conditions"] if c.get("busy"))
    return summary


def avro_goals(summary: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> list[dict[str, Any]]:
    """The targets per guarantee (met, or missed by how much), with the load they ran at."""
    goals = []
    for guarantee, systems in summary.items():
        if STREAMSERVE not in systems:
            continue
        for system, metric, op, target in TARGETS:
            if system not in systems:
                continue
            value = systems[system]["streamserve_vs_this"][metric]
            met = None if value is None else (value <= target if op == "<=" else value >= target)
            missed_by = None
            if met is False and value is not None:
                missed_by = round(value / target - 1 if op == "<=" else 1 - value / target, 3)
            conditions = [*systems[STREAMSERVE]["conditions"], *systems[system]["conditions"]]
            goals.append(
                {
                    "goal": f"{guarantee}: streamserve Avro / {NAMES[system]} {WHAT[metric]}",
                    "value": value,
                    "op": op,
                    "target": target,
                    "met": met,
                    "missed_by_fraction": missed_by,
                    "load_average_1m": stream_conditions.load_range(conditions),
                    "busy": any(c.get("busy") for c in conditions),
                }
            )
    return goals


def _fmt(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def avro_table(summary: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> str:
    """A Markdown table: one row per guarantee and system, with the load before its runs."""
    lines = [
        "**Avro events → enriched Avro (fraud model, 5 features): streamserve embedded vs "
        "Quix Streams, and streamserve's tensor-JSON path on the same model (drain, one "
        "instance)**",
        "",
        "| guarantee | system | records/s | processor CPU µs/record | broker CPU µs/record "
        "| rows per model call | streamserve Avro ÷ this: records/s, CPU µs/record "
        "| outputs = inputs, fields kept, score ≤ 1e-4 | load avg 1 min before | steal % |",
        "|" + "---|" * 10,
    ]
    for guarantee, systems in summary.items():
        for entry in systems.values():
            cpu, vs = entry["cpu_us_per_record"], entry["streamserve_vs_this"]
            partial = "" if entry["complete"] else f" ({_fmt(entry['processed'])} done)"
            busy = " (busy)" if entry.get("busy_runs") else ""
            lines.append(
                f"| {guarantee} | {entry['label']} | {_fmt(entry['throughput_rps'])}{partial} "
                f"| {_fmt(cpu['processor'])} | {_fmt(cpu['broker'])} "
                f"| {_fmt(entry['rows_per_call'], 1)} "
                f"| {_fmt(vs['throughput'], 2)}, {_fmt(vs['cpu_us_per_record'], 2)} "
                f"| {'yes' if entry['outputs_ok'] else 'NO'} "
                f"| {stream_conditions.load_range(entry.get('conditions', []))}{busy} "
                f"| {stream_conditions.steal_range(entry.get('conditions', []))} |"
            )
    return "\n".join(lines)


def avro_goals_text(goals: Sequence[Mapping[str, Any]]) -> str:
    lines = []
    for goal in goals:
        value = goal["value"]
        shown = "-" if value is None else f"{value:.2f}×"
        if goal["met"] is None:
            verdict = "NOT MEASURED"
        elif goal["met"]:
            verdict = "MET"
        else:
            verdict = f"MISSED by {100 * goal['missed_by_fraction']:.1f}%"
        load = f"load {goal['load_average_1m']}" + (", BUSY machine" if goal["busy"] else "")
        lines.append(
            f"- {goal['goal']}: {shown} (goal {goal['op']} {goal['target']}×) — {verdict} [{load}]"
        )
    return "\n".join(lines)


def avro_section(
    runs: Sequence[Mapping[str, Any]], plots: Any = None, plot_path: Any = None, title: str = ""
) -> dict[str, Any]:
    """Summary, goals and raw runs for results.json (and the bars figure when asked)."""
    if not runs:
        return {}
    summary = avro_summary(runs)
    section: dict[str, Any] = {
        "summary": summary,
        "goals": avro_goals(summary),
        "runs": list(runs),
    }
    if plots is not None and plot_path is not None:
        section["figure"] = plots.peer_bars(plot_path, summary, title).name
    return section


def avro_text(section: Mapping[str, Any]) -> str:
    if not section:
        return ""
    return "\n\n".join([avro_table(section["summary"]), avro_goals_text(section["goals"])])
