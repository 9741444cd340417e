"""PNG figures for ``python -m benchmarks stream`` (matplotlib, Agg backend, no display).

- ``latency_cdf_<model>.png`` — end-to-end latency CDF, one line per mode;
- ``throughput.png`` — records/s per mode, one panel per model (ratio to embedded on top);
- ``peers.png`` — streamserve embedded vs the peers: records/s and processor CPU µs/record
  per guarantee;
- ``outage_timeline.png`` — outputs/s, latency and breaker state around a model-server kill.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from benchmarks.common import BarPanel, plot_bar_panels

BREAKER_LEVELS = {0: "closed", 1: "half-open", 2: "open"}
EVENT_COLOURS = {"open": "red", "half-open": "orange", "closed": "green"}


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def latency_cdf(path: Path, model: str, samples: Mapping[str, Sequence[float]], note: str) -> Path:
    """One CDF line per mode from its sorted end-to-end latency samples (ms)."""
    plt = _pyplot()
    figure, ax = plt.subplots(figsize=(9, 5))
    for mode, values in samples.items():
        ordered = sorted(values)
        if not ordered:
            continue
        fractions = [(i + 1) / len(ordered) for i in range(len(ordered))]
        label = f"{mode} (p50 {ordered[len(ordered) // 2]:.0f} ms)"
        ax.step(ordered, fractions, where="post", label=label)
    ax.set_xscale("log")
    ax.set_xlabel("end-to-end latency, ms (output log-append time - input log-append time)")
    ax.set_ylabel("fraction of records")
    ax.set_ylim(0, 1.01)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(f"{model}: end-to-end latency CDF per mode — {note}", fontsize=10)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def throughput_bars(
    path: Path, per_model: Mapping[str, Mapping[str, float | None]], title: str
) -> Path:
    """Records/s per mode, one panel per model (shared helper from ``bench.common``)."""
    panels = [
        BarPanel(
            title=f"{model}: records/s (drain of a backlog, end to end through Kafka)",
            ylabel="records/s",
            groups=list(values),
            series={"records/s": list(values.values())},
        )
        for model, values in per_model.items()
    ]
    return plot_bar_panels(path, panels, title)


def peer_bars(
    path: Path, summary: Mapping[str, Mapping[str, Mapping[str, Any]]], title: str
) -> Path:
    """Two panels (records/s; processor CPU µs/record), groups = guarantees, bars = systems."""
    guarantees = list(summary)
    systems = list(dict.fromkeys(s for entries in summary.values() for s in entries))
    labels = {s: e["label"] for entries in summary.values() for s, e in entries.items()}

    def series(value: Any) -> dict[str, list[float | None]]:
        return {
            labels[s]: [value(summary[g][s]) if s in summary[g] else None for g in guarantees]
            for s in systems
        }

    panels = [
        BarPanel(
            title="records/s (drain of a backlog, one instance; higher is better)",
            ylabel="records/s",
            groups=guarantees,
            series=series(lambda e: e["throughput_rps"]),
        ),
        BarPanel(
            title="processor CPU µs per record (from /proc; lower is better)",
            ylabel="CPU µs/record",
            groups=guarantees,
            series=series(lambda e: e["cpu_us_per_record"]["processor"]),
        ),
    ]
    if any(e.get("steady", {}).get("throughput_rps") for s in summary.values() for e in s.values()):
        panels += [
            BarPanel(
                title="after warm-up: records/s (the drain's later records)",
                ylabel="records/s",
                groups=guarantees,
                series=series(lambda e: e["steady"]["throughput_rps"]),
            ),
            BarPanel(
                title="after warm-up: processor CPU µs per record",
                ylabel="CPU µs/record",
                groups=guarantees,
                series=series(lambda e: e["steady"]["cpu_us_per_record"]["processor"]),
            ),
        ]
    return plot_bar_panels(path, panels, title)


def outage_timeline(path: Path, scenarios: Sequence[Mapping[str, Any]], bucket_s: float) -> Path:
    """Per scenario (a column): outputs/s by mode + inputs/s, latency, breaker state."""
    plt = _pyplot()
    figure, axes = plt.subplots(
        3, len(scenarios), figsize=(7 * len(scenarios), 9), sharex="col", squeeze=False
    )
    for column, scenario in enumerate(scenarios):
        _outage_column(axes[:, column], scenario, bucket_s)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def _outage_column(axes: Any, scenario: Mapping[str, Any], bucket_s: float) -> None:
    buckets = scenario["timeline"]
    xs = [b["start_s"] for b in buckets]
    modes = sorted({m for b in buckets for m in b["by_mode"]})
    bottoms = [0.0] * len(buckets)
    rate_ax, latency_ax, breaker_ax = axes
    for mode in modes:
        heights = [b["by_mode"].get(mode, 0) / bucket_s for b in buckets]
        rate_ax.bar(
            xs,
            heights,
            width=bucket_s,
            bottom=bottoms,
            align="edge",
            label=f"outputs/s ({mode})",
            alpha=0.8,
        )
        bottoms = [a + h for a, h in zip(bottoms, heights, strict=True)]
    rate_ax.step(
        xs,
        [b["inputs"] / bucket_s for b in buckets],
        where="post",
        color="black",
        linewidth=1,
        label="inputs/s",
    )
    rate_ax.set_ylabel(f"records/s ({bucket_s} s buckets)")
    rate_ax.set_title(scenario["title"], fontsize=10)
    rate_ax.legend(fontsize=7, loc="upper right")
    p50 = [b["latency_p50_ms"] for b in buckets]
    worst = [b["latency_max_ms"] for b in buckets]
    latency_ax.plot(xs, p50, marker=".", label="p50")
    latency_ax.plot(xs, worst, marker=".", alpha=0.6, label="max")
    latency_ax.set_yscale("log")
    latency_ax.set_ylabel("end-to-end latency, ms")
    latency_ax.legend(fontsize=7, loc="upper right")
    states = scenario.get("breaker_samples", [])
    if states:
        breaker_ax.step(
            [s[0] for s in states],
            [s[1] for s in states],
            where="post",
            label="breaker (metrics scrape)",
        )
    labelled: set[str] = set()
    for t, state in scenario.get("breaker_events", []):
        breaker_ax.axvline(
            t,
            color=EVENT_COLOURS.get(state, "grey"),
            alpha=0.5,
            linewidth=1,
            label=None if state in labelled else f"log: breaker {state}",
        )
        labelled.add(state)
    breaker_ax.legend(fontsize=7, loc="upper right")
    breaker_ax.set_yticks(list(BREAKER_LEVELS), list(BREAKER_LEVELS.values()))
    breaker_ax.set_ylim(-0.3, 2.3)
    breaker_ax.set_xlabel("seconds since the producer started")
    breaker_ax.set_ylabel("breaker state")
    for ax in axes:
        ax.axvspan(
            scenario["killed_at_s"],
            scenario["ready_again_at_s"],
            color="grey",
            alpha=0.15,
            label="server down",
        )
        ax.grid(alpha=0.3)
