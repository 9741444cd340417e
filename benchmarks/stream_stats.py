"""Pure arithmetic for ``python -m benchmarks stream``: no Kafka, no processes, no clocks.

- :func:`summarize` — percentiles of a list of numbers.
- :func:`end_to_end_latencies` — output timestamp minus input timestamp, matched by key.
- :func:`throughput` — records per second over a span of timestamps.
- :func:`check_no_loss` — every input key has exactly one output (or DLQ record).
- :func:`check_values` — every output's tensor equals the model's answer for its key.
- :func:`timeline` — per-bucket counts and latency percentiles for the outage plot.
- :func:`parse_prometheus` / :func:`metric_sum` — read the processor's metrics.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from benchmarks.common import percentile

PERCENTILES = (50, 95, 99)


def summarize(values: Sequence[float]) -> dict[str, float | int | None]:
    """``count``, ``mean``, ``p50``, ``p95``, ``p99``, ``max`` (``None`` when empty).

    Percentiles interpolate linearly between closest ranks (:func:`common.percentile`).
    """
    if len(values) == 0:
        empty: dict[str, float | int | None] = {"count": 0, "mean": None, "max": None}
        empty.update({f"p{p}": None for p in PERCENTILES})
        return empty
    ordered = sorted(float(v) for v in values)
    result: dict[str, float | int | None] = {
        "count": len(ordered),
        "mean": sum(ordered) / len(ordered),
        "max": ordered[-1],
    }
    for p in PERCENTILES:
        result[f"p{p}"] = percentile(ordered, p)
    return result


def end_to_end_latencies(
    input_ts_ms: Mapping[Hashable, float], output_ts_ms: Iterable[tuple[Hashable, float]]
) -> list[float]:
    """Latency (ms) of each output whose key has an input timestamp; unknown keys are skipped."""
    latencies = []
    for key, out_ts in output_ts_ms:
        in_ts = input_ts_ms.get(key)
        if in_ts is not None:
            latencies.append(float(out_ts) - float(in_ts))
    return latencies


def throughput(
    count: int, start_ms: float | None, end_ms: float | None, fallback_seconds: float | None = None
) -> float:
    """``count / (end - start)`` in records per second (timestamps in ms).

    Without a usable span (missing, or under 1 ms), ``count / fallback_seconds`` (a wall-clock
    duration measured by the caller) if given, else 0.
    """
    if count <= 0:
        return 0.0
    if start_ms is not None and end_ms is not None and end_ms - start_ms >= 1:
        return count / ((end_ms - start_ms) / 1000)
    if fallback_seconds and fallback_seconds > 0:
        return count / fallback_seconds
    return 0.0


@dataclass
class LossReport:
    """What the read_committed output (plus DLQ) holds compared with the input keys."""

    expected: int
    outputs: int
    dlq: int
    lost: int
    duplicates: int
    unexpected: int
    lost_examples: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.lost == 0 and self.duplicates == 0 and self.unexpected == 0

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}

    def line(self, label: str) -> str:
        verdict = "OK" if self.ok else "FAILED"
        return (
            f"{label}: {self.expected} inputs, {self.outputs} outputs, {self.dlq} in DLQ, "
            f"{self.lost} lost, {self.duplicates} duplicates, {self.unexpected} unexpected"
            f" — {verdict}"
        )


def check_no_loss(
    expected_keys: Iterable[Hashable],
    output_keys: Iterable[Hashable],
    dlq_keys: Iterable[Hashable] = (),
    examples: int = 5,
) -> LossReport:
    """Each expected key must appear exactly once among outputs + DLQ records.

    ``lost``: expected keys never seen; ``duplicates``: extra copies of seen keys;
    ``unexpected``: keys that were not expected at all.
    """
    expected = set(expected_keys)
    outputs = list(output_keys)
    dlq = list(dlq_keys)
    seen = Counter(outputs)
    seen.update(dlq)
    lost = sorted((k for k in expected if k not in seen), key=str)
    duplicates = sum(n - 1 for k, n in seen.items() if n > 1 and k in expected)
    unexpected = sum(n for k, n in seen.items() if k not in expected)
    return LossReport(
        expected=len(expected),
        outputs=len(outputs),
        dlq=len(dlq),
        lost=len(lost),
        duplicates=duplicates,
        unexpected=unexpected,
        lost_examples=[str(k) for k in lost[:examples]],
    )


def expected_keys_below(
    keys_by_partition_offset: Mapping[int, Sequence[Hashable]], committed: Mapping[int, int]
) -> list[Hashable]:
    """Input keys whose offset is below the partition's committed offset (the processed prefix).

    ``keys_by_partition_offset[p][o]`` is the key at offset ``o`` of partition ``p``.
    """
    keys: list[Hashable] = []
    for partition, partition_keys in keys_by_partition_offset.items():
        keys.extend(partition_keys[: max(0, committed.get(partition, 0))])
    return keys


VALUE_TOLERANCE = 1e-4


def check_values(
    outputs: Iterable[tuple[Hashable, bytes | None]],
    expected: Mapping[Hashable, Any],
    output_name: str = "y",
    tolerance: float = VALUE_TOLERANCE,
    examples: int = 5,
) -> dict[str, Any]:
    """Compare each output JSON's ``outputs[output_name]`` with ``expected[key]``.

    Outputs whose key is not in ``expected`` are left to :func:`check_no_loss`. A value is
    wrong when it cannot be parsed, its size differs, or any element differs by more than
    ``tolerance``; ``ok`` needs at least one checked output and none wrong.
    """
    import numpy as np
    import orjson

    checked = wrong = 0
    worst = 0.0
    bad: list[str] = []
    for key, value in outputs:
        want = expected.get(key)
        if want is None:
            continue
        checked += 1
        reason = None
        try:
            got = np.asarray(orjson.loads(value or b"")["outputs"][output_name], np.float64)
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            reason = f"unreadable ({type(exc).__name__})"
        else:
            want_flat = np.asarray(want, np.float64).reshape(-1)
            if got.size != want_flat.size:
                reason = f"{got.size} values, expected {want_flat.size}"
            else:
                diff = float(np.max(np.abs(got.reshape(-1) - want_flat))) if got.size else 0.0
                worst = max(worst, diff)
                if not diff <= tolerance:
                    reason = f"differs by {diff:.3g}"
        if reason is not None:
            wrong += 1
            if len(bad) < examples:
                bad.append(f"{key!r}: {reason}")
    return {
        "checked": checked,
        "wrong": wrong,
        "max_abs_diff": worst,
        "tolerance": tolerance,
        "ok": checked > 0 and wrong == 0,
        "examples": bad,
    }


@dataclass
class Bucket:
    start_s: float
    outputs: int = 0
    by_mode: dict[str, int] = field(default_factory=dict)
    inputs: int = 0
    latency_p50_ms: float | None = None
    latency_max_ms: float | None = None


def timeline(
    outputs: Iterable[tuple[float, str, float]],
    inputs_ts_ms: Iterable[float],
    origin_ms: float,
    bucket_s: float = 0.5,
    end_s: float | None = None,
) -> list[Bucket]:
    """Bucket outputs ``(timestamp_ms, mode, latency_ms)`` and input timestamps by time.

    Buckets are ``bucket_s`` wide, start at ``origin_ms`` and run to the last event (or
    ``end_s``); events before ``origin_ms`` are ignored. Counts are per bucket (divide by
    ``bucket_s`` for a rate); latency is summarised over the outputs written in a bucket.
    """
    outputs = list(outputs)
    inputs = [t for t in inputs_ts_ms if t >= origin_ms]
    if end_s is not None:
        count = max(1, math.ceil(end_s / bucket_s - 1e-9))
    else:
        last_ms = max([t for t, _, _ in outputs] + inputs, default=origin_ms)
        count = int((last_ms - origin_ms) / 1000 // bucket_s) + 1
    buckets = [Bucket(start_s=round(i * bucket_s, 6)) for i in range(count)]
    latencies: list[list[float]] = [[] for _ in buckets]

    def index(ts_ms: float) -> int | None:
        i = int((ts_ms - origin_ms) / 1000 // bucket_s)
        return i if 0 <= i < count else None

    for ts, mode, latency in outputs:
        i = index(ts)
        if i is None:
            continue
        buckets[i].outputs += 1
        buckets[i].by_mode[mode] = buckets[i].by_mode.get(mode, 0) + 1
        latencies[i].append(latency)
    for ts in inputs:
        i = index(ts)
        if i is not None:
            buckets[i].inputs += 1
    for bucket, values in zip(buckets, latencies, strict=True):
        if values:
            bucket.latency_p50_ms = percentile(values, 50)
            bucket.latency_max_ms = float(max(values))
    return buckets


# --------------------------------------------------------------------------- Prometheus

Labels = frozenset[tuple[str, str]]


def parse_prometheus(text: str) -> dict[tuple[str, Labels], float]:
    """Samples of a Prometheus text exposition: ``{(name, labels): value}``."""
    samples: dict[tuple[str, Labels], float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        series, _, value = line.rpartition(" ")
        name, _, label_text = series.partition("{")
        labels: list[tuple[str, str]] = []
        for part in _split_labels(label_text.rstrip("}")):
            key, _, raw = part.partition("=")
            labels.append((key.strip(), raw.strip().strip('"')))
        try:
            samples[(name, frozenset(labels))] = float(value)
        except ValueError:
            continue
    return samples


def _split_labels(text: str) -> list[str]:
    parts, current, quoted = [], [], False
    for char in text:
        if char == '"':
            quoted = not quoted
        if char == "," and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    if current:
        parts.append("".join(current))
    return [p for p in parts if "=" in p]


def metric_sum(samples: Mapping[tuple[str, Labels], float], name: str, **labels: str) -> float:
    """Sum of the samples called ``name`` whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)
