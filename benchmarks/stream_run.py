"""One mode, measured twice on fresh topics and a fresh processor each time.

1. **Drain** (throughput): the N records are produced first (a backlog); a processor
   starts and works through them. Throughput = outputs / (the last output's log-append
   time - the start of the processor's first model call), so start-up and the group join
   do not count. CPU seconds of the processor, model server and broker
   are read from ``/proc`` between the processor's readiness and the last commit. Slow
   baselines stop after ``max_seconds``: the processor is stopped gracefully and the
   committed prefix is what counts (and is checked for loss).
2. **Latency** (closed loop): at most ``window`` records are in flight (produced, not yet
   readable in the output with ``read_committed``). End-to-end latency = output log-append
   time - input log-append time (one broker clock); "visible" latency also includes the
   wait for the transaction commit (input append time -> the benchmark's consumer sees it).

Both phases check that every input has exactly one output (or DLQ record).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from benchmarks import stream_io as kio
from benchmarks.stream_modes import Mode, Workload
from benchmarks.stream_procs import ServerProcess, WorkerProcess, cpu_seconds
from benchmarks.stream_stats import (
    check_no_loss,
    end_to_end_latencies,
    expected_keys_below,
    summarize,
    throughput,
)
from benchmarks.stream_worker import WorkerSpec
from streamserve.kafka.admin import Kafka, client_settings
from streamserve.processes import ChildProcess

WARMUP_RECORDS = 20
POLL_S = 0.2
SAMPLE_DIGITS = 2


@dataclass
class BenchContext:
    bootstrap: Kafka  # the bench's own clients: bootstrap servers or a client configuration
    broker_pid: int | None
    logs_dir: Path
    run_id: str
    partitions: int
    concurrency: int
    max_seconds: float
    latency_seconds: float
    progress: bool = True
    kafka_config: str | None = None  # the processors': a properties file (+ environment)
    kafka_role_flags: dict[str, list[str]] = field(default_factory=dict)

    def bar(self, total: int, desc: str) -> tqdm:
        return tqdm(
            total=total,
            desc=desc,
            unit="rec",
            disable=not self.progress,
            mininterval=0.5,
            leave=False,
            dynamic_ncols=True,
        )

    def topics(self, name: str) -> tuple[str, str, str]:
        """(input topic, output topic, group id) for a phase called ``name``."""
        base = f"{self.run_id}-{name}"
        kio.create_topics(self.bootstrap, [f"{base}-in", f"{base}-out"], self.partitions)
        return f"{base}-in", f"{base}-out", f"{base}-g"


def worker_spec(
    ctx: BenchContext,
    workload: Workload,
    mode: Mode,
    server: ServerProcess | None,
    topics: tuple[str, str, str],
    name: str,
    fallback: bool = False,
    guarantee: str = "exactly-once",
) -> WorkerSpec:
    in_topic, out_topic, group = topics
    targets: list[str] = []
    if mode.remote:
        assert server is not None
        targets = [server.grpc_url if mode.transport == "grpc" else server.rest_url]
    return WorkerSpec(
        bootstrap_servers=str(client_settings(ctx.bootstrap)["bootstrap.servers"]),
        kafka_config=ctx.kafka_config,
        kafka_role_flags=ctx.kafka_role_flags,
        input_topic=in_topic,
        output_topic=out_topic,
        group_id=group,
        model_name=workload.model_name,
        calls_path=str(ctx.logs_dir / f"{name}.calls.json"),
        codec=workload.codec,
        model_base_path=None if mode.remote else str(workload.base_path),
        targets=targets,
        protocol=mode.protocol,
        per_call_channel=mode.per_call_channel,
        max_batch_size=mode.max_batch_size,
        max_in_flight=mode.max_in_flight,
        fallback_base_path=str(workload.base_path) if fallback else None,
        image_roots=workload.image_roots,
        input_dtypes=workload.input_dtypes,
        guarantee=guarantee,
    )


def start_worker(ctx: BenchContext, spec: WorkerSpec, name: str) -> WorkerProcess:
    worker = WorkerProcess(spec, ctx.logs_dir / f"{name}.spec.json", ctx.logs_dir / f"{name}.log")
    worker.start()
    try:
        worker.wait_ready()
    except BaseException:
        worker.stop()
        raise
    return worker


def cpu_snapshot(
    ctx: BenchContext, processor: ChildProcess, server: ServerProcess | None
) -> dict[str, float | None]:
    snapshot = {
        "processor": cpu_seconds(processor.pid),
        "server": cpu_seconds(server.pid) if server is not None else None,
        "broker": cpu_seconds(ctx.broker_pid),
        "bench": time.process_time(),
    }
    breakdown = getattr(processor, "cpu_breakdown", None)  # e.g. a JVM's JIT threads
    if callable(breakdown):
        snapshot.update(breakdown())
    return snapshot


def cpu_delta(
    before: dict[str, float | None], after: dict[str, float | None]
) -> dict[str, float | None]:
    delta: dict[str, float | None] = {}
    for key, start in before.items():
        end = after.get(key)
        delta[key] = None if start is None or end is None else round(end - start, 3)
    return delta


def model_calls(calls: dict[str, list[Any]], since: float = 0.0) -> dict[str, Any]:
    """Model-call latency (ms) and rows per call, from the worker's timed predictor."""
    done = [c for mode_calls in calls.values() for c in mode_calls if c[0] >= since and c[3]]
    rows = [c[2] for c in done]
    return {
        "latency_ms": summarize([c[1] * 1000 for c in done]),
        "calls": len(done),
        "rows_per_call": round(sum(rows) / len(rows), 2) if rows else None,
        "failed_calls": sum(1 for mc in calls.values() for c in mc if not c[3]),
    }


def keys_by_partition(records: Sequence[kio.BenchRecord]) -> dict[int, list[Hashable]]:
    """Input keys in offset order per partition (a fresh topic, one idempotent producer)."""
    keys: dict[int, list[Hashable]] = defaultdict(list)
    for record in records:
        keys[record.partition].append(record.key)
    return keys


# --------------------------------------------------------------------------- phases


def drain_phase(
    ctx: BenchContext,
    workload: Workload,
    mode: Mode,
    server: ServerProcess | None,
    records: Sequence[kio.BenchRecord],
    name: str,
) -> dict[str, Any]:
    topics = ctx.topics(name)
    kio.produce_all(ctx.bootstrap, topics[0], records)
    worker = start_worker(ctx, worker_spec(ctx, workload, mode, server, topics, name), name)
    used_server = server if mode.remote else None
    result, _ = measure_drain(
        ctx, records, topics, name, worker, lambda: worker_calls(worker), server=used_server
    )
    return result


def worker_calls(worker: WorkerProcess) -> tuple[dict[str, Any], float | None]:
    """The worker's model-call summary and its first call's wall-clock time (ms)."""
    calls = worker.calls()
    first_call_ms = min((c[0] * 1000 for mc in calls.values() for c in mc), default=None)
    return model_calls(calls), first_call_ms


def measure_drain(
    ctx: BenchContext,
    records: Sequence[kio.BenchRecord],
    topics: tuple[str, str, str],
    name: str,
    processor: ChildProcess,
    calls: Callable[[], tuple[dict[str, Any], float | None]],
    server: ServerProcess | None = None,
    keep_values: bool = False,
    warm_after: int | None = None,
) -> tuple[dict[str, Any], list[kio.ReadRecord]]:
    """Measure a started, ready ``processor`` draining ``records`` (already produced to
    ``topics[0]``) until its group has committed them all; stop it and check the output.

    ``calls()`` (asked after the processor stopped) gives the model-call summary and the
    first call's wall-clock ms (the start of the throughput span). Any processor works:
    streamserve's worker or a peer app, as long as it consumes with group ``topics[2]``.
    Returns the drain's figures and the read_committed outputs (with values if asked).
    With ``warm_after``, also ``steady``: records/s and CPU per record after that many
    records were committed (wall-clock span between the benchmark's commit polls).
    """
    watcher = kio.CommittedWatcher(ctx.bootstrap, topics[2], topics[0], ctx.partitions)
    steady = SteadyWindow(warm_after, processor, ctx, server) if warm_after else None
    try:
        before, started = cpu_snapshot(ctx, processor, server), time.monotonic()
        committed_at_end = _wait_committed(
            ctx, watcher, len(records), name, steady.progress if steady else None
        )
        after, ended = cpu_snapshot(ctx, processor, server), time.monotonic()
        seconds = ended - started
    finally:
        exit_code = processor.stop()
        committed = watcher.offsets()  # after the processor's last commit
        watcher.close()
    expected = expected_keys_below(keys_by_partition(records), committed)
    outputs = kio.read_all(ctx.bootstrap, topics[1], len(expected), keep_values=keep_values)
    dlq = kio.read_all(ctx.bootstrap, f"{topics[0]}.dlq", 0, quiet_s=0.2)
    loss = check_no_loss(expected, [o.key for o in outputs], [d.key for d in dlq])
    done = len(expected)
    cpu = cpu_delta(before, after)
    call_summary, first_call_ms = calls()
    last_output_ms = max((o.timestamp_ms for o in outputs), default=None)
    result = {
        "records": len(records),
        "processed": done,
        "complete": done == len(records),
        "seconds": round(seconds, 3),
        "throughput_rps": round(throughput(done, first_call_ms, last_output_ms, seconds), 1),
        "cpu_s": cpu,
        "cpu_us_per_record": {
            k: (round(v * 1e6 / done, 1) if v is not None and done else None)
            for k, v in cpu.items()
        },
        "model_call": call_summary,
        "loss": loss.as_dict(),
        "exit_code": exit_code,
    }
    if steady is not None:
        result["steady"] = steady.result(after, ended, committed_at_end)
    return result, outputs


def _wait_committed(
    ctx: BenchContext,
    watcher: kio.CommittedWatcher,
    total: int,
    desc: str,
    progress: Callable[[int], None] | None = None,
) -> int:
    deadline = time.monotonic() + ctx.max_seconds
    done = 0
    with ctx.bar(total, desc) as bar:
        while done < total and time.monotonic() < deadline:
            time.sleep(POLL_S)
            now = sum(watcher.offsets().values())
            bar.update(now - done)
            done = now
            if progress is not None:
                progress(done)
    return done


@dataclass
class SteadyWindow:
    """The drain after its first ``warm_after`` committed records: the CPU snapshot, time
    and committed count when it began (a cold JVM compiles through a drain's start)."""

    warm_after: int
    processor: ChildProcess
    ctx: BenchContext
    server: ServerProcess | None = None
    start: tuple[dict[str, float | None], float, int] | None = None

    def progress(self, committed: int) -> None:
        if self.start is None and committed >= self.warm_after:
            snapshot = cpu_snapshot(self.ctx, self.processor, self.server)
            self.start = (snapshot, time.monotonic(), committed)

    def result(self, after: dict[str, float | None], ended: float, done: int) -> dict[str, Any]:
        if self.start is None or done <= self.start[2] or ended <= self.start[1]:
            return {"warm_after": self.warm_after, "records": 0, "throughput_rps": None,
                    "cpu_us_per_record": {}}  # fmt: skip
        before, began, committed = self.start
        count = done - committed
        cpu = cpu_delta(before, after)
        return {
            "warm_after": self.warm_after,
            "from_record": committed,
            "records": count,
            "seconds": round(ended - began, 3),
            "throughput_rps": round(count / (ended - began), 1),
            "cpu_us_per_record": {
                k: (round(v * 1e6 / count, 1) if v is not None else None) for k, v in cpu.items()
            },
        }


def latency_phase(
    ctx: BenchContext,
    workload: Workload,
    mode: Mode,
    server: ServerProcess | None,
    count: int,
    name: str,
) -> dict[str, Any]:
    topics = ctx.topics(name)
    warm = workload.records(min(WARMUP_RECORDS, ctx.concurrency), ctx.partitions, "w")
    measured = workload.records(count, ctx.partitions, "l")
    worker = start_worker(ctx, worker_spec(ctx, workload, mode, server, topics, name), name)
    watcher = kio.OutputWatcher(ctx.bootstrap, topics[1])
    try:
        kio.closed_loop(ctx.bootstrap, topics[0], warm, watcher, len(warm), 120.0)
        since = time.time()
        with ctx.bar(count, name) as bar:
            produced = kio.closed_loop(
                ctx.bootstrap,
                topics[0],
                measured,
                watcher,
                ctx.concurrency,
                ctx.latency_seconds,
                bar.update,
            )
    finally:
        exit_code = worker.stop()
    sent = list(warm) + list(measured[:produced])
    watcher.wait_for(len(sent), 10.0)
    watcher.close()
    inputs = {r.key: r.timestamp_ms for r in kio.read_all(ctx.bootstrap, topics[0], len(sent))}
    dlq = kio.read_all(ctx.bootstrap, f"{topics[0]}.dlq", 0, quiet_s=0.2)
    outputs = [r for r in watcher.records if r.key and r.key.startswith(b"l")]
    e2e = end_to_end_latencies(inputs, [(r.key, r.timestamp_ms) for r in outputs])
    visible = end_to_end_latencies(inputs, [(r.key, r.received_ms) for r in outputs])
    loss = check_no_loss(
        [r.key for r in sent], [r.key for r in watcher.records], [d.key for d in dlq]
    )
    return {
        "window": ctx.concurrency,
        "records": len(outputs),
        "e2e_ms": summarize(e2e),
        "visible_ms": summarize(visible),
        "model_call": model_calls(worker.calls(), since),
        "loss": loss.as_dict(),
        "exit_code": exit_code,
        "e2e_samples_ms": [round(v, SAMPLE_DIGITS) for v in sorted(e2e)],
    }


def run_mode(
    ctx: BenchContext,
    workload: Workload,
    mode: Mode,
    server: ServerProcess | None,
    records: Sequence[kio.BenchRecord],
    latency_count: int,
    round_index: int,
) -> dict[str, Any]:
    name = f"{workload.model}-{mode.name}-r{round_index}"
    return {
        "mode": mode.name,
        "label": mode.label,
        "round": round_index,
        "settings": mode.settings(),
        "drain": drain_phase(ctx, workload, mode, server, records, f"{name}-drain"),
        "latency": latency_phase(ctx, workload, mode, server, latency_count, f"{name}-lat"),
    }
