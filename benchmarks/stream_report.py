"""Turning raw ``bench stream`` runs into a summary, the goal checks and a text table."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from benchmarks.common import median, ratio
from benchmarks.stream_stats import summarize

GOAL_REMOTE_VS_BLOCKING = 10.0
GOAL_REMOTE_VS_EMBEDDED = 0.7
GOAL_EMBEDDED_RPS = 50_000.0


def _median(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return round(median(present), 3) if present else None


def _get(run: Mapping[str, Any], *path: str) -> Any:
    value: Any = run
    for key in path:
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return value


def mode_summary(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One mode's runs (rounds) → medians of the scalars, latency over pooled samples."""
    samples = [v for run in runs for v in run["latency"].get("e2e_samples_ms", [])]

    def med(*path: str) -> float | None:
        return _median([_get(run, *path) for run in runs])

    return {
        "label": runs[0]["label"],
        "settings": runs[0]["settings"],
        "rounds": len(runs),
        "throughput_rps": med("drain", "throughput_rps"),
        "drain_processed": med("drain", "processed"),
        "drain_complete": all(run["drain"]["complete"] for run in runs),
        "e2e_ms": summarize(samples),
        "visible_p50_ms": med("latency", "visible_ms", "p50"),
        "model_call_ms": {
            q: med("drain", "model_call", "latency_ms", q) for q in ("p50", "p95", "p99")
        },
        "model_call_idle_p50_ms": med("latency", "model_call", "latency_ms", "p50"),
        "rows_per_call": med("drain", "model_call", "rows_per_call"),
        "cpu_us_per_record": {
            k: med("drain", "cpu_us_per_record", k) for k in ("processor", "server", "broker")
        },
        "cpu_s": {k: med("drain", "cpu_s", k) for k in ("processor", "server", "broker")},
        "no_loss": all(run["drain"]["loss"]["ok"] and run["latency"]["loss"]["ok"] for run in runs),
    }


def model_summary(runs: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per mode (in first-seen order), with throughput and latency ratios to embedded."""
    by_mode: dict[str, list[Mapping[str, Any]]] = {}
    for run in runs:
        by_mode.setdefault(run["mode"], []).append(run)
    summary = {mode: mode_summary(mode_runs) for mode, mode_runs in by_mode.items()}
    embedded = summary.get("embedded")
    for entry in summary.values():
        entry["vs_embedded"] = {
            "throughput": _round(
                ratio(entry["throughput_rps"], embedded["throughput_rps"] if embedded else None)
            ),
            "e2e_p50": _round(
                ratio(entry["e2e_ms"]["p50"], embedded["e2e_ms"]["p50"] if embedded else None)
            ),
        }
    return summary


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def _goal(name: str, value: float | None, target: float, unit: str) -> dict[str, Any]:
    met = value is not None and value >= target
    missed_by = None if value is None or met else round(1 - value / target, 3)
    return {
        "goal": name,
        "value": _round(value),
        "target": target,
        "unit": unit,
        "met": met,
        "missed_by_fraction": missed_by,
    }


def evaluate_goals(
    summaries: Mapping[str, Mapping[str, Mapping[str, Any]]],
) -> list[dict[str, Any]]:
    """The issue's goals (tiny model, same run) and the ImageNet remote/embedded ratio."""
    goals: list[dict[str, Any]] = []
    tiny = summaries.get("tiny", {})

    def rps(model: Mapping[str, Mapping[str, Any]], mode: str) -> float | None:
        return model[mode]["throughput_rps"] if mode in model else None

    if tiny:
        goals.append(
            _goal(
                "tiny: batched remote gRPC / per-record blocking gRPC",
                ratio(rps(tiny, "grpc"), rps(tiny, "grpc-blocking")),
                GOAL_REMOTE_VS_BLOCKING,
                "x",
            )
        )
        goals.append(
            _goal(
                "tiny: batched remote gRPC / embedded",
                ratio(rps(tiny, "grpc"), rps(tiny, "embedded")),
                GOAL_REMOTE_VS_EMBEDDED,
                "x",
            )
        )
        goals.append(
            _goal(
                "tiny: embedded records/s end to end",
                rps(tiny, "embedded"),
                GOAL_EMBEDDED_RPS,
                "records/s",
            )
        )
    imagenet = summaries.get("imagenet", {})
    if imagenet:
        value = ratio(rps(imagenet, "grpc"), rps(imagenet, "embedded"))
        goals.append(
            {
                "goal": "imagenet: batched remote gRPC / embedded (no target; stated)",
                "value": _round(value),
                "target": None,
                "unit": "x",
                "met": None,
                "missed_by_fraction": None,
            }
        )
    return goals


# --------------------------------------------------------------------------- text


def _fmt(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def table(model: str, summary: Mapping[str, Mapping[str, Any]]) -> str:
    """A Markdown table: one row per mode."""
    header = (
        "| mode | records/s | × embedded (records/s, e2e p50) | e2e p50 / p95 / p99 ms "
        "| visible p50 ms "
        "| model call p50 / p99 ms (rows/call) | CPU µs/record proc / server / broker "
        "| 0 lost |"
    )
    lines = [f"**{model}**", "", header, "|" + "---|" * 8]
    for mode, entry in summary.items():
        e2e, call, cpu = entry["e2e_ms"], entry["model_call_ms"], entry["cpu_us_per_record"]
        partial = "" if entry["drain_complete"] else f" ({_fmt(entry['drain_processed'])} done)"
        lines.append(
            f"| {mode} | {_fmt(entry['throughput_rps'])}{partial} "
            f"| {_fmt(entry['vs_embedded']['throughput'], 2)}, "
            f"{_fmt(entry['vs_embedded']['e2e_p50'], 2)} "
            f"| {_fmt(e2e['p50'], 1)} / {_fmt(e2e['p95'], 1)} / {_fmt(e2e['p99'], 1)} "
            f"| {_fmt(entry['visible_p50_ms'], 1)} "
            f"| {_fmt(call['p50'], 2)} / {_fmt(call['p99'], 2)} "
            f"({_fmt(entry['rows_per_call'], 1)}) "
            f"| {_fmt(cpu['processor'])} / {_fmt(cpu['server'])} / {_fmt(cpu['broker'])} "
            f"| {'yes' if entry['no_loss'] else 'NO'} |"
        )
    return "\n".join(lines)


def goals_text(goals: Sequence[Mapping[str, Any]]) -> str:
    lines = []
    for goal in goals:
        value = goal["value"]
        shown = "-" if value is None else f"{value:,.2f}"
        if goal["met"] is None:
            lines.append(f"- {goal['goal']}: {shown}{goal['unit']}")
            continue
        verdict = (
            "MET"
            if goal["met"]
            else (
                f"MISSED by {100 * goal['missed_by_fraction']:.0f}%"
                if goal["missed_by_fraction"] is not None
                else "NOT MEASURED"
            )
        )
        lines.append(
            f"- {goal['goal']}: {shown} (goal ≥ {goal['target']:,g}"
            f"{'' if goal['unit'] == 'records/s' else goal['unit']}) — {verdict}"
        )
    return "\n".join(lines)
