"""The server benchmark's results: rows, ratios against the goals, table, JSON, plot.

Pure functions over plain dicts (a *record* is one measured run: ``target``,
``protocol``, ``transport``, ``batch``, ``round`` and the fields of
:meth:`benchmarks.common.LoadResult.to_json`), so they are unit-tested without
running anything.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmarks.common import BarPanel, median, plot_bar_panels, ratio

WORKERS_TARGET = "streamserve-workers2"  # `serve --workers 2`, batch 1 V2 only
TARGET_ORDER = ("streamserve", WORKERS_TARGET, "mlserver", "minimal", "minimal-uvloop")
WORKERS_SCENARIOS = ("v2-grpc", "v2-rest")
WORKERS_BATCH = 1
SCENARIO_ORDER = ("tf-grpc", "v2-grpc", "tf-rest", "v2-rest")
# goals of issue 8, acceptance point 5 (tiny model unless said otherwise)
GOAL_VS_MLSERVER = 1.5
GOAL_VS_MINIMAL = 0.9
GOAL_CPU_VS_MLSERVER = 0.6
GOAL_HEAVY_VS_RAW = 0.8
# goals of issue 16: one worker against the minimal server on uvloop; two workers vs one
GOAL_VS_MINIMAL_UVLOOP = 0.8
GOAL_WORKERS_2_VS_1 = 1.7
_AGGREGATED = (
    "rps",
    "p50_ms",
    "p99_ms",
    "server_cpu_ms_per_request",
    "client_cpu_ms_per_request",
)


def scenario_name(protocol: str, transport: str) -> str:
    return f"{protocol}-{transport}"


def aggregate(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (target, scenario, batch): the median of each figure over the rounds."""
    groups: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    for record in records:
        key = (record["target"], scenario_name(record["protocol"], record["transport"]),
               int(record["batch"]))  # fmt: skip
        groups.setdefault(key, []).append(record)
    rows = []
    for (target, scenario, batch), runs in groups.items():
        row: dict[str, Any] = {"target": target, "scenario": scenario, "batch": batch,
                               "rounds": len(runs)}  # fmt: skip
        for name in _AGGREGATED:
            values = [run[name] for run in runs if _is_number(run.get(name))]
            row[name] = median(values) if values else None
        row["rows_per_s"] = None if row["rps"] is None else row["rps"] * batch
        row["errors"] = sum(int(run.get("errors") or 0) for run in runs)
        row["first_error"] = next(
            (run["first_error"] for run in runs if run.get("first_error")), ""
        )
        row["tool"] = runs[0].get("tool", "")
        rows.append(row)
    return sorted(rows, key=_row_order)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not (isinstance(value, float) and math.isnan(value))


def _row_order(row: dict[str, Any]) -> tuple[int, int, int]:
    scenario = SCENARIO_ORDER.index(row["scenario"]) if row["scenario"] in SCENARIO_ORDER else 99
    target = TARGET_ORDER.index(row["target"]) if row["target"] in TARGET_ORDER else 99
    return (row["batch"], scenario, target)


def find_row(
    rows: Sequence[dict[str, Any]], target: str, scenario: str, batch: int
) -> dict[str, Any] | None:
    for row in rows:
        if (row["target"], row["scenario"], row["batch"]) == (target, scenario, batch):
            return row
    return None


@dataclass
class Ratio:
    """``value`` = streamserve's figure / the reference's; ``passed`` None when no goal."""

    name: str
    scenario: str
    batch: int | None
    value: float | None
    goal: str
    passed: bool | None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _check(value: float | None, goal: float | None, at_least: bool) -> bool | None:
    if value is None or goal is None:
        return None
    return value >= goal if at_least else value <= goal


def _goal_text(goal: float | None, at_least: bool) -> str:
    if goal is None:
        return "info"
    return f"{'>=' if at_least else '<='} {goal}"


def compute_ratios(
    rows: Sequence[dict[str, Any]], batches: Sequence[int], heavy: dict[str, Any] | None = None
) -> list[Ratio]:
    """streamserve against MLServer (req/s, CPU per request), the minimal server and raw."""
    ratios: list[Ratio] = []

    def add(name: str, scenario: str, batch: int | None, value: float | None,
            goal: float | None, at_least: bool = True) -> None:  # fmt: skip
        ratios.append(Ratio(name, scenario, batch, value, _goal_text(goal, at_least),
                            _check(value, goal, at_least)))  # fmt: skip

    for batch in batches:
        for scenario, goal in (("v2-grpc", GOAL_VS_MLSERVER), ("v2-rest", None)):
            ours = find_row(rows, "streamserve", scenario, batch)
            theirs = find_row(rows, "mlserver", scenario, batch)
            if ours and theirs:
                add("req/s streamserve / MLServer", scenario, batch,
                    ratio(ours["rps"], theirs["rps"]), goal)  # fmt: skip
                add("server CPU per request streamserve / MLServer", scenario, batch,
                    ratio(ours["server_cpu_ms_per_request"], theirs["server_cpu_ms_per_request"]),
                    GOAL_CPU_VS_MLSERVER, at_least=False)  # fmt: skip
        tf_grpc = find_row(rows, "streamserve", "tf-grpc", batch)
        v2_grpc = find_row(rows, "streamserve", "v2-grpc", batch)
        minimal = find_row(rows, "minimal", "v2-grpc", batch)
        for floor, label in (("minimal", "minimal grpc.aio"),
                             ("minimal-uvloop", "minimal grpc.aio on uvloop")):  # fmt: skip
            floor_row = find_row(rows, floor, "v2-grpc", batch)
            goal = GOAL_VS_MINIMAL_UVLOOP if floor == "minimal-uvloop" else GOAL_VS_MINIMAL
            if floor_row and v2_grpc:
                add(f"req/s streamserve / {label}", "v2-grpc", batch,
                    ratio(v2_grpc["rps"], floor_row["rps"]), goal)  # fmt: skip
        mlserver_grpc = find_row(rows, "mlserver", "v2-grpc", batch)
        if mlserver_grpc and tf_grpc:
            add("req/s streamserve TF Predict / MLServer V2", "tf-grpc", batch,
                ratio(tf_grpc["rps"], mlserver_grpc["rps"]), None)  # fmt: skip
        if minimal and tf_grpc:
            add("req/s streamserve TF Predict / minimal V2", "tf-grpc", batch,
                ratio(tf_grpc["rps"], minimal["rps"]), None)  # fmt: skip
        minimal_uvloop = find_row(rows, "minimal-uvloop", "v2-grpc", batch)
        if minimal_uvloop and tf_grpc:
            add("req/s streamserve TF Predict / minimal V2 on uvloop", "tf-grpc", batch,
                ratio(tf_grpc["rps"], minimal_uvloop["rps"]), GOAL_VS_MINIMAL_UVLOOP)  # fmt: skip
        for ours in (v2_grpc, tf_grpc):
            if minimal_uvloop and ours:  # what req/s would be with a core to itself
                add("srv CPU/req minimal V2 on uvloop / streamserve", ours["scenario"], batch,
                    ratio(minimal_uvloop["server_cpu_ms_per_request"],
                          ours["server_cpu_ms_per_request"]), None)  # fmt: skip
        for scenario in WORKERS_SCENARIOS:
            one = find_row(rows, "streamserve", scenario, batch)
            two = find_row(rows, WORKERS_TARGET, scenario, batch)
            if one and two:
                add("req/s streamserve --workers 2 / --workers 1", scenario, batch,
                    ratio(two["rps"], one["rps"]), GOAL_WORKERS_2_VS_1)  # fmt: skip
                add("srv CPU/req streamserve --workers 2 / --workers 1", scenario, batch,
                    ratio(two["server_cpu_ms_per_request"], one["server_cpu_ms_per_request"]),
                    None)  # fmt: skip
    if heavy and heavy.get("server") and heavy.get("raw"):
        add("images/s streamserve (dynamic batching) / raw onnxruntime batched", "heavy", None,
            ratio(heavy["server"]["images_per_s"], heavy["raw"]["images_per_s"]),
            GOAL_HEAVY_VS_RAW)  # fmt: skip
    return ratios


# -- text -------------------------------------------------------------------------------------


def _fmt(value: Any, digits: int = 0) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:,.{digits}f}"


def format_rows(rows: Sequence[dict[str, Any]], raw: dict[str, Any] | None = None) -> str:
    header = ("target", "scenario", "batch", "req/s", "rows/s", "p50 ms", "p99 ms",
              "srv CPU ms/req", "load CPU ms/req", "errors", "load tool")  # fmt: skip
    lines = [header]
    for row in rows:
        lines.append((row["target"], row["scenario"], str(row["batch"]), _fmt(row["rps"]),
                      _fmt(row["rows_per_s"]), _fmt(row["p50_ms"], 2), _fmt(row["p99_ms"], 2),
                      _fmt(row["server_cpu_ms_per_request"], 3),
                      _fmt(row.get("client_cpu_ms_per_request"), 3), str(row["errors"]),
                      row["tool"]))  # fmt: skip
    for batch, figures in sorted((raw or {}).items()):
        lines.append(("raw onnxruntime", "in-process", str(batch), _fmt(figures["calls_per_s"]),
                      _fmt(figures["rows_per_s"]), _fmt(figures["p50_ms"], 3),
                      _fmt(figures["p99_ms"], 3), "-", "-", "0", "session.run loop"))  # fmt: skip
    return _columns(lines)


def format_ratios(ratios: Sequence[Ratio]) -> str:
    lines = [("ratio", "scenario", "batch", "value", "goal", "met")]
    for item in ratios:
        met = {True: "yes", False: "NO", None: "-"}[item.passed]
        lines.append((item.name, item.scenario, "-" if item.batch is None else str(item.batch),
                      _fmt(item.value, 2), item.goal, met))  # fmt: skip
    return _columns(lines)


def format_heavy(heavy: dict[str, Any] | None) -> str:
    if not heavy:
        return "heavy model: not run"
    raw, server = heavy.get("raw") or {}, heavy.get("server") or {}
    lines = [("heavy model", "images/s", "p50 ms", "p99 ms", "detail")]
    lines.append(("raw onnxruntime", _fmt(raw.get("images_per_s"), 1), _fmt(raw.get("p50_ms"), 1),
                  _fmt(raw.get("p99_ms"), 1), f"batch {raw.get('batch')}"))  # fmt: skip
    if server:
        lines.append(("streamserve", _fmt(server.get("images_per_s"), 1),
                      _fmt(server.get("p50_ms"), 1), _fmt(server.get("p99_ms"), 1),
                      server.get("detail", "")))  # fmt: skip
    return _columns(lines)


def _columns(lines: Sequence[Sequence[str]]) -> str:
    widths = [max(len(line[index]) for line in lines) for index in range(len(lines[0]))]
    text = []
    for number, line in enumerate(lines):
        text.append("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)))
        if number == 0:
            text.append("  ".join("-" * width for width in widths))
    return "\n".join(line.rstrip() for line in text)


# -- JSON, plot ---------------------------------------------------------------------------------


def results_document(
    meta: dict[str, Any],
    records: Sequence[dict[str, Any]],
    raw: dict[int, dict[str, Any]],
    heavy: dict[str, Any] | None,
    notes: Sequence[str],
) -> dict[str, Any]:
    """The ``results.json`` shape: ``meta``, ``raw_onnxruntime`` (by batch), ``rows``
    (medians), ``runs`` (every measured run), ``ratios``, ``heavy``, ``notes``."""
    batches = sorted({int(record["batch"]) for record in records} | set(raw))
    rows = aggregate(records)
    return {
        "meta": meta,
        "raw_onnxruntime": {str(batch): figures for batch, figures in sorted(raw.items())},
        "rows": rows,
        "runs": list(records),
        "ratios": [item.to_json() for item in compute_ratios(rows, batches, heavy)],
        "heavy": heavy,
        "notes": list(notes),
    }


def plot_results(path: Path, document: dict[str, Any]) -> Path:
    rows = document["rows"]
    groups = sorted({(row["batch"], row["scenario"]) for row in rows},
                    key=lambda item: (item[0], SCENARIO_ORDER.index(item[1])))  # fmt: skip
    labels = [f"{scenario}\nbatch {batch}" for batch, scenario in groups]
    targets = [target for target in TARGET_ORDER if any(row["target"] == target for row in rows)]

    def series(field: str) -> dict[str, list[float | None]]:
        out: dict[str, list[float | None]] = {}
        for target in targets:
            values = []
            for batch, scenario in groups:
                row = find_row(rows, target, scenario, batch)
                values.append(row[field] if row else None)
            out[target] = values
        return out

    panels = []
    if rows:
        panels = [
            BarPanel(
                "Tiny model, closed loop: requests per second", "req/s", labels, series("rps")
            ),
            BarPanel("Server CPU per request", "ms", labels, series("server_cpu_ms_per_request")),
        ]
    heavy = document.get("heavy") or {}
    if heavy.get("raw") and heavy.get("server"):
        panels.append(BarPanel(
            "Heavy model (ImageNet classifier): images per second", "images/s", ["heavy"],
            {"raw onnxruntime (batched)": [heavy["raw"]["images_per_s"]],
             "streamserve (single-image requests, dynamic batching)":
                 [heavy["server"]["images_per_s"]]}))  # fmt: skip
    if not panels:
        panels.append(BarPanel("No results", "", ["-"], {"none": [None]}))
    meta = document.get("meta", {})
    title = (f"python -m benchmarks server: concurrency {meta.get('concurrency')}, "
             f"{meta.get('duration_s')} s per run, {meta.get('cpu_count')} cores")  # fmt: skip
    return plot_bar_panels(path, panels, title)


__all__ = [
    "Ratio",
    "aggregate",
    "compute_ratios",
    "find_row",
    "format_heavy",
    "format_ratios",
    "format_rows",
    "plot_results",
    "results_document",
]
