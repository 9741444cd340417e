"""The heavy half of ``python -m benchmarks server``: the ImageNet classifier's ``tensor``
signature, single-image V2 gRPC requests to a streamserve with dynamic batching, against
raw onnxruntime's batched throughput in this process.

Raw and server runs alternate for ``--rounds`` rounds (medians reported), so a busy
neighbour on a shared machine slows both rather than one.
"""

from __future__ import annotations

import argparse
import contextlib
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from benchmarks.common import ClientPool, LoadJob, LoadResult, median
from benchmarks.server import (
    GRPC_METHODS,
    HEAVY,
    HEAVY_SIGNATURE,
    measure_raw,
    open_session,
    stopping,
    v2_grpc_request,
)


def run_heavy(
    args: argparse.Namespace, out: Path, notes: list[str], stack: contextlib.ExitStack
) -> dict[str, Any] | None:
    import numpy as np

    from benchmarks import targets as t
    from streamserve.models.cli import build_model

    try:
        version_dir = build_model(HEAVY, args.models_dir / HEAVY)
    except Exception as exc:  # the models extra may be missing
        notes.append(f"heavy model skipped: cannot build the ImageNet classifier: {exc}")
        return None
    flags = ["--enable_batching", f"--batching_parameters_file={_batching_file(args, out)}"]
    server = stack.enter_context(
        stopping(t.start_streamserve("streamserve-heavy", HEAVY, version_dir.parent,
                                     out / "logs", flags))
    )  # fmt: skip
    image = np.random.default_rng(2).standard_normal((1, 3, 224, 224)).astype(np.float32)
    session = open_session(version_dir / "model.onnx")
    # the server can batch at most min(clients, max_batch_size) images; the reference is
    # raw onnxruntime's best throughput at that batch size or at max_batch_size
    sizes = sorted({min(args.concurrency, args.heavy_max_batch_size), args.heavy_max_batch_size})
    feeds = {size: {"input": np.repeat(image, size, axis=0)} for size in sizes}
    payload = v2_grpc_request(HEAVY, {"input": image}, HEAVY_SIGNATURE)
    job = LoadJob("grpc", server.grpc_target, GRPC_METHODS["v2"], payload, args.concurrency)
    pool = stack.enter_context(ClientPool(1))
    raw_runs: dict[int, list[dict[str, Any]]] = {size: [] for size in sizes}
    server_runs: list[LoadResult] = []
    raw_seconds = max(2.0, args.heavy_duration / len(sizes))
    for _ in range(max(1, args.rounds)):
        for size in sizes:
            raw_runs[size].append(measure_raw(session, feeds[size], size, raw_seconds))
        server_runs.append(
            pool.run(job, max(2.0, args.warmup), args.heavy_duration, server.pid, "grpc.aio")
        )
    del session
    return {
        "model": HEAVY,
        "signature": HEAVY_SIGNATURE,
        "raw": _raw_summary(raw_runs),
        "server": _server_summary(args, server_runs, server.rest_url),
    }


def _batching_file(args: argparse.Namespace, out: Path) -> Path:
    path = out / "heavy_batching.pbtxt"
    path.write_text(
        f"max_batch_size {{ value: {args.heavy_max_batch_size} }}\n"
        f"batch_timeout_micros {{ value: {args.heavy_batch_timeout_micros} }}\n"
        f"num_batch_threads {{ value: {args.heavy_batch_threads} }}\n"
        "max_enqueued_batches { value: 1000 }\n"
    )
    return path


def _raw_summary(runs: dict[int, list[dict[str, Any]]]) -> dict[str, Any]:
    """Median images/s per batch size; the best batch size is the reference."""
    per_size = []
    for size, measured in runs.items():
        per_size.append({
            "batch": size,
            "images_per_s": median([m["rows_per_s"] for m in measured]),
            "p50_ms": median([m["p50_ms"] for m in measured]),
            "p99_ms": median([m["p99_ms"] for m in measured]),
            "rounds": [m["rows_per_s"] for m in measured],
        })  # fmt: skip
    best = max(per_size, key=lambda figures: figures["images_per_s"])
    return {**best, "all_batch_sizes": per_size}


def _server_summary(
    args: argparse.Namespace, runs: list[LoadResult], rest_url: str
) -> dict[str, Any]:
    images = median([run.rps for run in runs])
    detail = (
        f"V2 gRPC, 1 image per request, {args.concurrency} clients, "
        f"max_batch_size {args.heavy_max_batch_size}, "
        f"batch_timeout_micros {args.heavy_batch_timeout_micros}, "
        f"num_batch_threads {args.heavy_batch_threads}"
    )
    mean_batch = _scrape_mean_batch_size(rest_url, HEAVY)
    if mean_batch is not None:
        detail += f"; mean batch {mean_batch:.1f} rows (incl. warm-up)"
    return {
        "images_per_s": images,
        "p50_ms": median([run.p50_ms for run in runs]),
        "p99_ms": median([run.p99_ms for run in runs]),
        "server_cpu_ms_per_request": median([run.server_cpu_ms_per_request or 0.0 for run in runs]),
        "errors": sum(run.errors for run in runs),
        "first_error": next((run.first_error for run in runs if run.first_error), ""),
        "rounds": [run.rps for run in runs],
        "mean_batch_size": mean_batch,
        "detail": detail,
    }


def mean_batch_size(metrics_text: str, model: str) -> float | None:
    """Mean rows per runtime call of ``model`` from the ``streamserve_batch_size``
    histogram in Prometheus text; None when the histogram is absent or empty."""
    totals = {"sum": 0.0, "count": 0.0}
    for line in metrics_text.splitlines():
        for suffix in totals:
            prefix = f"streamserve_batch_size_{suffix}{{"
            if line.startswith(prefix) and f'model="{model}"' in line:
                totals[suffix] += float(line.rsplit(" ", 1)[1])
    return totals["sum"] / totals["count"] if totals["count"] else None


def _scrape_mean_batch_size(rest_url: str, model: str) -> float | None:
    try:
        with urllib.request.urlopen(f"{rest_url}/metrics", timeout=10) as response:
            return mean_batch_size(response.read().decode(), model)
    except (urllib.error.URLError, OSError):
        return None


__all__ = ["mean_batch_size", "run_heavy"]
