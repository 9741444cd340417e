"""The peers section of ``bench stream``: summary, ratios, the issue's targets, a text table.

Pure functions of the raw runs from :func:`benchmarks.stream_peers.run_peers` (no Kafka,
no processes). Ratios are streamserve / peer: above 1 for records/s means streamserve is
faster; below 1 for CPU µs/record means streamserve spends less processor CPU per record.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from benchmarks.common import median, ratio

STREAMSERVE = "streamserve"
# Issue 15's targets (the same for both guarantees): streamserve / peer.
TARGETS: tuple[tuple[str, str, str, float], ...] = (
    ("quix", "cpu_us_per_record", "<=", 0.33),
    ("quix", "throughput_rps", ">=", 1.5),
    ("kafka-streams", "throughput_rps", ">=", 2.0),
)


def _median(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return round(median(present), 3) if present else None


def system_summary(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One system's rounds under one guarantee → medians, plus whether every check passed."""
    drains = [run["drain"] for run in runs]
    calls = [d["model_call"].get("calls") for d in drains]
    return {
        "label": runs[0]["label"],
        "rounds": len(runs),
        "throughput_rps": _median([d["throughput_rps"] for d in drains]),
        "cpu_us_per_record": {
            k: _median([d["cpu_us_per_record"].get(k) for d in drains])
            for k in ("processor", "processor_jit", "broker")
        },
        "rows_per_call": _median([d["model_call"].get("rows_per_call") for d in drains]),
        "model_calls": _median(calls),
        "processed": _median([d["processed"] for d in drains]),
        "complete": all(d["complete"] for d in drains),
        "steady": {
            "throughput_rps": _median([_steady(d).get("throughput_rps") for d in drains]),
            "cpu_us_per_record": {
                k: _median([(_steady(d).get("cpu_us_per_record") or {}).get(k) for d in drains])
                for k in ("processor", "processor_jit")
            },
        },
        "max_abs_diff": max((run["values"]["max_abs_diff"] for run in runs), default=None),
        "outputs_ok": all(run["drain"]["loss"]["ok"] and run["values"]["ok"] for run in runs),
    }


def _steady(drain: Mapping[str, Any]) -> Mapping[str, Any]:
    return drain.get("steady") or {}


def peers_summary(runs: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """``{guarantee: {system: summary}}`` (first-seen order) with ratios streamserve / system."""
    grouped: dict[str, dict[str, list[Mapping[str, Any]]]] = {}
    for run in runs:
        grouped.setdefault(run["guarantee"], {}).setdefault(run["system"], []).append(run)
    summary = {
        guarantee: {system: system_summary(rs) for system, rs in systems.items()}
        for guarantee, systems in grouped.items()
    }
    for systems in summary.values():
        ours = systems.get(STREAMSERVE)
        for entry in systems.values():
            entry["streamserve_vs_this"] = _ratios(ours, entry)
            entry["steady"]["streamserve_vs_this"] = _ratios(
                ours["steady"] if ours else None, entry["steady"]
            )
    return summary


def _ratios(ours: Mapping[str, Any] | None, theirs: Mapping[str, Any]) -> dict[str, Any]:
    if ours is None:
        return {"throughput": None, "cpu_us_per_record": None}
    return {
        "throughput": _round(ratio(ours["throughput_rps"], theirs["throughput_rps"])),
        "cpu_us_per_record": _round(
            ratio(ours["cpu_us_per_record"]["processor"], theirs["cpu_us_per_record"]["processor"])
        ),
    }


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def peer_goals(summary: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> list[dict[str, Any]]:
    """Issue 15's targets for each guarantee and peer measured (met / missed by how much)."""
    goals = []
    for guarantee, systems in summary.items():
        for peer, metric, op, target in TARGETS:
            if peer not in systems or peer == STREAMSERVE:
                continue
            key = "throughput" if metric == "throughput_rps" else "cpu_us_per_record"
            value = systems[peer]["streamserve_vs_this"][key]
            met = None if value is None else (value <= target if op == "<=" else value >= target)
            missed_by = None
            if met is False and value is not None:
                missed_by = round(value / target - 1 if op == "<=" else 1 - value / target, 3)
            what = "processor CPU µs/record" if key == "cpu_us_per_record" else "records/s"
            goals.append(
                {
                    "goal": f"{guarantee}: streamserve / {peer} {what}",
                    "value": value,
                    "op": op,
                    "target": target,
                    "met": met,
                    "missed_by_fraction": missed_by,
                }
            )
    return goals


# --------------------------------------------------------------------------- text


def _fmt(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def peers_table(summary: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> str:
    """A Markdown table: one row per guarantee and system."""
    lines = [
        "**tiny model: streamserve embedded vs peers (drain, one instance)**",
        "",
        "| guarantee | system | records/s | processor CPU µs/record (of which JIT) "
        "| broker CPU µs/record "
        "| rows per model call | streamserve ÷ this: records/s, CPU µs/record "
        "| outputs = inputs, values ≤ 1e-4 |",
        "|" + "---|" * 8,
    ]
    for guarantee, systems in summary.items():
        for entry in systems.values():
            cpu, vs = entry["cpu_us_per_record"], entry["streamserve_vs_this"]
            partial = "" if entry["complete"] else f" ({_fmt(entry['processed'])} done)"
            jit = "" if cpu.get("processor_jit") is None else f" ({_fmt(cpu['processor_jit'])})"
            lines.append(
                f"| {guarantee} | {entry['label']} | {_fmt(entry['throughput_rps'])}{partial} "
                f"| {_fmt(cpu['processor'])}{jit} | {_fmt(cpu['broker'])} "
                f"| {_fmt(entry['rows_per_call'], 1)} "
                f"| {_fmt(vs['throughput'], 2)}, {_fmt(vs['cpu_us_per_record'], 2)} "
                f"| {'yes' if entry['outputs_ok'] else 'NO'} |"
            )
    return "\n".join(lines)


def steady_table(summary: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> str:
    """The same systems after warm-up (the drain's later records; see ``--peer-warmup``)."""
    lines = [
        "**after warm-up (records committed after the drain's first share; a cold JVM "
        "compiles through the start)**",
        "",
        "| guarantee | system | records/s | processor CPU µs/record (of which JIT) "
        "| streamserve ÷ this: records/s, CPU µs/record |",
        "|" + "---|" * 5,
    ]
    for guarantee, systems in summary.items():
        for entry in systems.values():
            steady = entry["steady"]
            cpu, vs = steady["cpu_us_per_record"], steady["streamserve_vs_this"]
            jit = "" if cpu.get("processor_jit") is None else f" ({_fmt(cpu['processor_jit'])})"
            lines.append(
                f"| {guarantee} | {entry['label']} | {_fmt(steady['throughput_rps'])} "
                f"| {_fmt(cpu.get('processor'))}{jit} "
                f"| {_fmt(vs['throughput'], 2)}, {_fmt(vs['cpu_us_per_record'], 2)} |"
            )
    return "\n".join(lines)


def has_steady(summary: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> bool:
    return any(e["steady"]["throughput_rps"] is not None for s in summary.values()
               for e in s.values())  # fmt: skip


def peer_goals_text(goals: Sequence[Mapping[str, Any]]) -> str:
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
        lines.append(f"- {goal['goal']}: {shown} (goal {goal['op']} {goal['target']}×) — {verdict}")
    return "\n".join(lines)
