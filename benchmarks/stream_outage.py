"""``--server-down-at T``: kill the model server T seconds into a remote run, restart it.

A paced producer feeds a remote (batched gRPC) processor at a steady rate; at T seconds
the model server gets SIGKILL, ``down_for`` seconds later it is started again on the same
ports. Meanwhile the benchmark scrapes the processor's metrics (breaker state, pause
flag, fallback count) and afterwards reads its log for the breaker's transitions. Run
once without and once with ``--fallback-model-base-path`` (the same model, embedded).

Afterwards every input key must appear exactly once in the read_committed output (0 lost,
0 duplicates, none in the DLQ): :func:`run_outage` returns that check with the timeline.
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import orjson

from benchmarks import stream_io as kio
from benchmarks.stream_modes import MODES, Workload
from benchmarks.stream_procs import ServerProcess, WorkerProcess
from benchmarks.stream_run import BenchContext, start_worker, worker_spec
from benchmarks.stream_stats import (
    check_no_loss,
    metric_sum,
    parse_prometheus,
    summarize,
    timeline,
)

SCRAPE_S = 0.25
BUCKET_S = 0.5
BREAKER_EVENT = re.compile(
    r"^(?P<ts>\d+\.\d+) \w+ streamserve\.stream\.invoker: "
    r"breaker (?P<state>open|half-open|closed)\b"
)


class MetricsScraper:
    """Samples the worker's metrics every ``SCRAPE_S`` seconds in a thread."""

    def __init__(self, worker: WorkerProcess, origin: float) -> None:
        self.worker = worker
        self.origin = origin
        self.samples: list[dict[str, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="metrics-scraper")

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(SCRAPE_S):
            text = self.worker.metrics_text(timeout=SCRAPE_S * 2)
            if not text:
                continue
            samples = parse_prometheus(text)
            states = [
                v for (name, _), v in samples.items() if name == "streamserve_stream_breaker_state"
            ]
            self.samples.append(
                {
                    "t": round(time.time() - self.origin, 3),
                    "breaker": max(states, default=0.0),
                    "paused": metric_sum(samples, "streamserve_stream_consumer_paused"),
                    "fallback": metric_sum(samples, "streamserve_stream_fallback_records_total"),
                    "retries": metric_sum(samples, "streamserve_stream_model_call_retries_total"),
                }
            )

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def breaker_events(log_text: str, origin: float) -> list[tuple[float, str]]:
    """``(seconds since origin, new state)`` for each breaker transition in a worker log."""
    events = []
    for line in log_text.splitlines():
        match = BREAKER_EVENT.match(line)
        if match:
            events.append((round(float(match["ts"]) - origin, 3), match["state"]))
    return events


def run_outage(
    ctx: BenchContext,
    workload: Workload,
    down_at: float,
    down_for: float,
    rate: float,
    recovery_s: float,
    fallback: bool,
) -> dict[str, Any]:
    name = f"{workload.model}-outage-{'fallback' if fallback else 'nofallback'}"
    total = int(rate * (down_at + down_for + recovery_s))
    records = workload.records(total, ctx.partitions, "o")
    warm = workload.records(min(20, ctx.concurrency), ctx.partitions, "w")
    topics = ctx.topics(name)
    events: dict[str, float] = {}
    failures: list[Exception] = []
    with contextlib.ExitStack() as stack:
        server = ServerProcess(
            workload.model_name, workload.base_path, ctx.logs_dir / f"{name}.server.log"
        )
        stack.callback(server.stop)
        server.start_and_wait()
        spec = worker_spec(ctx, workload, MODES["grpc"], server, topics, name, fallback)
        worker = start_worker(ctx, spec, name)
        stack.callback(worker.stop)
        watcher = kio.OutputWatcher(ctx.bootstrap, topics[1])
        stack.callback(watcher.close)
        kio.closed_loop(ctx.bootstrap, topics[0], warm, watcher, len(warm), 120.0)
        producer = kio.PacedProducer(ctx.bootstrap, topics[0], records, rate)
        producer.start()
        scraper = MetricsScraper(worker, producer.started_at)
        scraper.start()
        stack.callback(scraper.stop)
        chaos = threading.Thread(
            target=_kill_and_restart,
            name="outage",
            daemon=True,
            args=(server, producer.started_at, down_at, down_for, events, failures),
        )
        chaos.start()
        give_up = producer.started_at + down_at + down_for + recovery_s + 120
        with ctx.bar(total, name) as bar:
            while not watcher.wait_for(len(warm) + total, 0.5) and time.time() < give_up:
                bar.update(max(0, watcher.count - len(warm) - bar.n))
        chaos.join(180)
        producer.join(30)
    if failures:
        raise RuntimeError(f"the model server did not come back: {failures[0]}")
    return _analyse(
        ctx, name, topics, records, warm, producer, scraper, worker, events, fallback, rate
    )


def _kill_and_restart(
    server: ServerProcess,
    origin: float,
    down_at: float,
    down_for: float,
    events: dict[str, float],
    failures: list[Exception],
) -> None:
    """Scenario timing (not readiness): kill at ``down_at``, start again ``down_for`` later;
    the moments (seconds since ``origin``) go into ``events``."""
    try:
        time.sleep(max(0.0, origin + down_at - time.time()))
        server.kill()
        events["killed_at_s"] = round(time.time() - origin, 3)
        time.sleep(down_for)
        events["restarted_at_s"] = round(time.time() - origin, 3)
        server.start_and_wait()
        events["ready_again_at_s"] = round(time.time() - origin, 3)
    except Exception as exc:  # reported by run_outage once the run has been wound down
        events["failed"] = 1.0
        failures.append(exc)


def _analyse(
    ctx: BenchContext,
    name: str,
    topics: tuple[str, str, str],
    records: list[kio.BenchRecord],
    warm: list[kio.BenchRecord],
    producer: kio.PacedProducer,
    scraper: MetricsScraper,
    worker: WorkerProcess,
    events: dict[str, float],
    fallback: bool,
    rate: float,
) -> dict[str, Any]:
    sent = warm + records[: producer.produced]
    outputs = kio.read_all(ctx.bootstrap, topics[1], len(sent), keep_values=True)
    inputs = {r.key: r.timestamp_ms for r in kio.read_all(ctx.bootstrap, topics[0], len(sent))}
    dlq = kio.read_all(ctx.bootstrap, f"{topics[0]}.dlq", 0, quiet_s=0.2)
    loss = check_no_loss([r.key for r in sent], [o.key for o in outputs], [d.key for d in dlq])
    points = []
    for output in outputs:
        mode = str(orjson.loads(output.value or b"{}").get("mode", "?"))
        points.append((output.timestamp_ms, mode, output.timestamp_ms - inputs.get(output.key, 0)))
    origin_ms = producer.started_at * 1000
    buckets = timeline(points, inputs.values(), origin_ms, bucket_s=BUCKET_S)
    measured = [p for p in points if p[0] >= origin_ms]
    by_mode: dict[str, int] = {}
    for _, mode, _ in measured:
        by_mode[mode] = by_mode.get(mode, 0) + 1
    title = (
        f"{'with' if fallback else 'without'} fallback: {rate:.0f} records/s, "
        f"server killed at {events['killed_at_s']:.1f} s, "
        f"ready again at {events['ready_again_at_s']:.1f} s"
    )
    return {
        "name": name,
        "fallback": fallback,
        "title": title,
        "rate_rps": rate,
        "records": len(sent),
        **events,
        "outputs_by_mode": by_mode,
        "latency_ms": summarize([p[2] for p in measured]),
        "fallback_metric": scraper.samples[-1]["fallback"] if scraper.samples else None,
        "retries_metric": scraper.samples[-1]["retries"] if scraper.samples else None,
        "paused_seconds": round(SCRAPE_S * sum(1 for s in scraper.samples if s["paused"]), 2),
        "breaker_samples": [[s["t"], s["breaker"]] for s in scraper.samples],
        "breaker_events": breaker_events(_read(worker.log_path), producer.started_at),
        "timeline": [asdict(b) for b in buckets],
        "loss": loss.as_dict(),
        "loss_line": loss.line(f"outage {name}"),
    }


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""
