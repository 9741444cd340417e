"""The machine's conditions before each measured run: load average and CPU steal.

The benchmark machines are shared: a figure taken while other work ran says less than one
taken on a quiet machine, and a per-record processor suffers more from that than a
batching one. So every run records, just before it starts, the load average and the share
of CPU time the hypervisor stole over a short window (``/proc/stat``), and the report
prints them next to the figures, warning when the 1-minute load is above
:data:`BUSY_LOAD_PER_CPU` per core (1.5 on 2 cores).
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

BUSY_LOAD_PER_CPU = 0.75  # 1.5 on the project's 2-core machines
STEAL_WINDOW_S = 0.5


def cpu_times(stat_text: str) -> tuple[int, int]:
    """``(steal, total)`` jiffies from the aggregate ``cpu`` line of ``/proc/stat``
    (guest time is already inside user time, so it is left out of the total)."""
    for line in stat_text.splitlines():
        fields = line.split()
        if fields and fields[0] == "cpu":
            values = [int(v) for v in fields[1:9]]  # user nice system idle iowait irq softirq steal
            values += [0] * (8 - len(values))
            return values[7], sum(values)
    raise ValueError("no aggregate cpu line in /proc/stat")


def steal_percent(before: tuple[int, int], after: tuple[int, int]) -> float | None:
    """Stolen share of all CPU time between two :func:`cpu_times` readings, in percent."""
    total = after[1] - before[1]
    if total <= 0:
        return None
    return round(100.0 * (after[0] - before[0]) / total, 2)


def _read_stat() -> tuple[int, int] | None:
    try:
        return cpu_times(Path("/proc/stat").read_text())
    except (OSError, ValueError):
        return None


def sample(window_s: float = STEAL_WINDOW_S) -> dict[str, Any]:
    """The conditions now: load averages (1, 5, 15 min), steal over ``window_s``, cores,
    and whether the load counts as busy."""
    before = _read_stat()
    time.sleep(window_s)  # a measuring window, not a wait for readiness
    after = _read_stat()
    cpus = os.cpu_count() or 1
    load = [round(v, 2) for v in os.getloadavg()]
    steal = steal_percent(before, after) if before and after else None
    return {
        "load_average": load,
        "steal_percent": steal,
        "cpus": cpus,
        "busy": is_busy(load[0], cpus),
        "at": round(time.time(), 3),
    }


def is_busy(load_1m: float, cpus: int) -> bool:
    return load_1m > BUSY_LOAD_PER_CPU * cpus


def describe(conditions: Mapping[str, Any]) -> str:
    """``load 0.42/0.50/0.61, steal 0.0%`` (and ``BUSY`` when it is)."""
    load = "/".join(f"{v:.2f}" for v in conditions["load_average"])
    steal = conditions.get("steal_percent")
    text = f"load {load}, steal {'-' if steal is None else f'{steal:.1f}%'}"
    return text + (" BUSY" if conditions.get("busy") else "")


def warning(conditions: Mapping[str, Any], what: str) -> str | None:
    """A line to print when the machine was busy before ``what``."""
    if not conditions.get("busy"):
        return None
    limit = BUSY_LOAD_PER_CPU * conditions["cpus"]
    return (
        f"warning: load average {conditions['load_average'][0]:.2f} > {limit:g} on "
        f"{conditions['cpus']} cores before {what}: other work shares these cores, so its "
        "figures read low"
    )


def load_range(samples: Sequence[Mapping[str, Any]]) -> str:
    """The 1-minute loads of several runs, ``0.4–1.2`` (or one value)."""
    loads = [s["load_average"][0] for s in samples if s]
    if not loads:
        return "-"
    low, high = min(loads), max(loads)
    return f"{low:.2f}" if low == high else f"{low:.2f}–{high:.2f}"


def steal_range(samples: Sequence[Mapping[str, Any]]) -> str:
    steals = [s["steal_percent"] for s in samples if s and s.get("steal_percent") is not None]
    if not steals:
        return "-"
    low, high = min(steals), max(steals)
    return f"{low:.1f}" if low == high else f"{low:.1f}–{high:.1f}"
