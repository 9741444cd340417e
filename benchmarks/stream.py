"""``python -m benchmarks stream``: embedded vs remote inference on a real Kafka stream, measured.

On a real broker (the project's LocalKafka, or ``--bootstrap-servers``) the same records go
through the stream processor in every mode of ``--modes`` (see
:mod:`~benchmarks.stream_modes`), alternating within one invocation (``--rounds``
repeats the whole alternation). Each mode is measured twice on fresh topics
(:mod:`~benchmarks.stream_run`): a **drain** of N pre-produced records gives
throughput, model-call latency and CPU seconds of processor, model server and broker; a
**closed loop** of ``--concurrency`` records in flight gives end-to-end latency
percentiles (output log-append time - input log-append time, both the broker's clock).
Every phase checks that each input has exactly one output (read_committed).

``--peers quix,kafka-streams`` adds streamserve embedded against a Quix Streams app and a
Kafka Streams app doing the same job on the same broker, exactly-once and at-least-once,
in alternating rounds (:mod:`~benchmarks.stream_peers`; ``--modes none`` runs only that).

``--workload avro --peers quix`` runs instead issue 23's Avro comparison
(:mod:`~benchmarks.stream_avro`): transaction events in the Confluent wire format (schema in
a Schema Registry) → ``streamserve stream --input-format avro --output-format enriched``,
the same CLI on tensor JSON with the same model, and a Quix Streams app with Quix's own
Avro serializers; the load average and CPU steal before every run are recorded.

``--server-down-at T`` adds the outage scenario (:mod:`~benchmarks.stream_outage`):
kill the model server T seconds into a remote run, restart it, once without and once with
a fallback model; a timeline plot and a 0-lost check per run.

Writes ``results.json``, ``latency_cdf_<model>.png``, ``throughput.png``, ``peers.png``
and ``outage_timeline.png`` into ``--out`` and prints Markdown tables and the goal checks.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import os
import platform
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from streamserve.kafka import client_config

HELP = "stream processor benchmark: embedded vs remote modes on a real Kafka broker"


def configure(parser: argparse.ArgumentParser) -> None:
    work = parser.add_argument_group("workload")
    work.add_argument(
        "--workload",
        choices=["tensor", "avro"],
        default="tensor",
        help="tensor: the modes and peers on tensor JSON (default); avro: only the Avro "
        "comparison (Avro events → enriched Avro; streamserve, its tensor-JSON path on the "
        "same model, and --peers quix), --records events per drain",
    )
    work.add_argument("--model", choices=["tiny", "imagenet", "both"], default="both")
    work.add_argument(
        "--records",
        type=int,
        default=50_000,
        help="tiny-model records drained per mode (default 50000)",
    )
    work.add_argument(
        "--image-records",
        type=int,
        default=300,
        help="ImageNet records (photo file paths) drained per mode (default 300)",
    )
    work.add_argument(
        "--modes",
        default="embedded,grpc,rest,grpc-blocking,grpc-channel-per-record,v2-grpc",
        help="comma-separated; also available: v2-rest; 'none' runs no mode (only --peers)",
    )
    work.add_argument("--partitions", type=int, default=4, help="partitions per topic")
    work.add_argument(
        "--concurrency",
        type=int,
        default=32,
        help="closed-loop window of the latency phase: records produced and not "
        "yet output (tiny model; default 32)",
    )
    work.add_argument(
        "--image-concurrency",
        type=int,
        default=4,
        help="the same window for the ImageNet model (default 4)",
    )
    work.add_argument(
        "--latency-records",
        type=int,
        default=2000,
        help="records measured in each latency phase (tiny; ImageNet uses "
        "a third of --image-records)",
    )
    work.add_argument("--rounds", type=int, default=1, help="repeat the mode alternation")
    work.add_argument(
        "--max-seconds-per-mode",
        type=float,
        default=20.0,
        help="stop a drain after this long (slow baselines): the committed prefix counts",
    )
    work.add_argument(
        "--latency-seconds", type=float, default=15.0, help="stop a latency phase after this long"
    )
    peers = parser.add_argument_group("peers (--peers): other stream processors, same job")
    peers.add_argument(
        "--peers",
        metavar="PEERS",
        help="comma-separated: quix (Quix Streams, own venv), kafka-streams (Java, built "
        "with Maven); each runs against streamserve embedded in alternating rounds (tiny model)",
    )
    peers.add_argument(
        "--peer-guarantees",
        default="exactly-once,at-least-once",
        help="guarantees the peer comparison runs under (default: both)",
    )
    peers.add_argument(
        "--peer-records",
        type=int,
        help="records drained per system in the peer comparison (default: --records)",
    )
    peers.add_argument(
        "--peer-warmup",
        type=float,
        default=0.5,
        help="share of each peer-comparison drain treated as warm-up for the extra "
        "'after warm-up' figures (default 0.5: the second half; 0 turns them off)",
    )
    with contextlib.suppress(argparse.ArgumentError):  # unless the Kafka flags have it
        peers.add_argument(
            "--schema-registry-url",
            help="--workload avro: a Confluent-compatible Schema Registry to use (default: "
            "one started by the project for the run)",
        )
    outage = parser.add_argument_group("outage (--server-down-at)")
    outage.add_argument(
        "--server-down-at",
        type=float,
        metavar="SECONDS",
        help="kill the model server this long into a remote run (twice: without and with fallback)",
    )
    outage.add_argument(
        "--server-down-for",
        type=float,
        default=5.0,
        help="seconds before the server is started again (default 5)",
    )
    outage.add_argument(
        "--outage-rate",
        type=float,
        default=None,
        help="records/s fed during the outage run (default 1000 tiny, 10 ImageNet)",
    )
    outage.add_argument(
        "--outage-recovery-s",
        type=float,
        default=15.0,
        help="seconds of input after the restart (default 15: longer than "
        "the breaker's longest probe cool-down, 10 s)",
    )
    infra = parser.add_argument_group("infrastructure and output")
    infra.add_argument("--out", type=Path, default=Path("bench-results/stream"))
    client_config.add_arguments(
        infra,
        bootstrap_help="use this Kafka cluster instead of starting a LocalKafka (also "
        "bootstrap.servers from --kafka-config or STREAMSERVE_KAFKA_BOOTSTRAP_SERVERS); its "
        "security settings come from the same flags, file or environment",
    )
    infra.add_argument("--work-dir", type=Path, help="models go here (default: OUT/models)")
    infra.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from benchmarks.stream_modes import parse_modes
    from benchmarks.stream_peers import parse_guarantees, parse_peers

    try:
        modes = [] if args.modes.strip() == "none" else parse_modes(args.modes)
        peers = parse_peers(args.peers) if args.peers else []
        guarantees = parse_guarantees(args.peer_guarantees)
        if peers and args.model == "imagenet":
            raise ValueError("--peers compares the tiny model: use --model tiny or both")
        if not modes and not peers:
            raise ValueError("--modes none needs --peers")
        if not 0 <= args.peer_warmup < 1:
            raise ValueError("--peer-warmup is a share of the records: 0 <= it < 1")
        if args.workload == "avro" and (not peers or args.server_down_at or set(peers) - {"quix"}):
            raise ValueError("--workload avro compares with --peers quix (and has no outage run)")
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    logging.getLogger("httpx").setLevel(logging.WARNING)  # readiness polls are not news
    out: Path = args.out
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    models = ["tiny", "imagenet"] if args.model == "both" else [args.model]
    if not modes:
        models = ["tiny"]
    machine = machine_info()
    started = time.time()
    if args.workload == "avro":
        return _run_avro_workload(args, out, logs, machine, peers, guarantees, started)
    with contextlib.ExitStack() as stack:
        kafka, broker_pid = _broker(args, stack)
        ctx = _context(args, kafka, broker_pid, logs)
        workloads = _workloads(models, args.work_dir or out / "models")
        runs = (
            {model: _run_modes(args, ctx, workloads[model], modes) for model in models}
            if modes
            else {}
        )
        peer_runs = _run_peers(args, ctx, workloads["tiny"], peers, guarantees) if peers else []
        outages = _run_outages(args, ctx, workloads[models[0]]) if args.server_down_at else []
    machine["load_average_end"] = list(os.getloadavg())
    return _report(args, out, machine, runs, outages, time.time() - started, peer_runs)


# --------------------------------------------------------------------------- set-up


def machine_info() -> dict[str, Any]:
    cpu_model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    memory_gib = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        first = Path("/proc/meminfo").read_text().splitlines()[0]
        memory_gib = round(int(first.split()[1]) / 1024 / 1024, 1)
    return {
        "cpus": os.cpu_count(),
        "cpu_model": cpu_model,
        "memory_gib": memory_gib,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average_start": list(os.getloadavg()),
    }


def _broker(
    args: argparse.Namespace, stack: contextlib.ExitStack
) -> tuple[client_config.KafkaClientConfig, int | None]:
    """The given cluster's client configuration, else a LocalKafka's; and its broker pid."""
    kafka = client_config.from_args(args)
    if kafka.bootstrap_servers:
        from streamserve.kafka.admin import connected_admin

        connected_admin(kafka.for_role("admin"), args.kafka_connect_timeout_s)
        return kafka, None
    from streamserve.kafka import LocalKafka

    print("starting a local Kafka broker ...", file=sys.stderr, flush=True)
    local = stack.enter_context(LocalKafka())
    return client_config.KafkaClientConfig(local.client_config), local.pid


def _context(
    args: argparse.Namespace,
    kafka: client_config.KafkaClientConfig,
    broker_pid: int | None,
    logs: Path,
) -> Any:
    from benchmarks.stream_run import BenchContext

    return BenchContext(
        bootstrap=dict(kafka.common),
        kafka_config=args.kafka_config,
        kafka_role_flags={role: getattr(args, f"{role}_config") for role in client_config.ROLES},
        broker_pid=broker_pid,
        logs_dir=logs,
        run_id=f"sb-{uuid.uuid4().hex[:8]}",
        partitions=args.partitions,
        concurrency=args.concurrency,
        max_seconds=args.max_seconds_per_mode,
        latency_seconds=args.latency_seconds,
        progress=not args.no_progress,
    )


def _workloads(models: list[str], models_dir: Path) -> dict[str, Any]:
    from benchmarks.stream_modes import imagenet_workload, tiny_workload

    builders = {"tiny": tiny_workload, "imagenet": imagenet_workload}
    return {model: builders[model](models_dir) for model in models}


# --------------------------------------------------------------------------- runs


def _run_modes(
    args: argparse.Namespace, ctx: Any, workload: Any, modes: list[Any]
) -> list[dict[str, Any]]:
    from benchmarks.stream_procs import ServerProcess
    from benchmarks.stream_run import run_mode

    image = workload.model == "imagenet"
    count = args.image_records if image else args.records
    latency_count = max(10, args.image_records // 3) if image else args.latency_records
    if image:
        ctx = dataclasses.replace(ctx, concurrency=args.image_concurrency)
    records = workload.records(count, ctx.partitions, "")
    server = None
    runs = []
    with contextlib.ExitStack() as stack:
        if any(mode.remote for mode in modes):
            server = ServerProcess(
                workload.model_name,
                workload.base_path,
                ctx.logs_dir / f"{workload.model}.server.log",
            )
            stack.callback(server.stop)
            server.start_and_wait()
        for round_index in range(args.rounds):
            for mode in modes:
                result = run_mode(ctx, workload, mode, server, records, latency_count, round_index)
                runs.append(result)
                print(_one_line(workload.model, result), file=sys.stderr, flush=True)
    return runs


def _one_line(model: str, result: dict[str, Any]) -> str:
    drain, latency = result["drain"], result["latency"]
    loss = "0 lost" if drain["loss"]["ok"] and latency["loss"]["ok"] else "LOSS CHECK FAILED"
    p50 = latency["e2e_ms"]["p50"]
    return (
        f"[{model}] {result['mode']:<24} {drain['throughput_rps']:>10,.0f} records/s "
        f"({drain['processed']}/{drain['records']})  e2e p50 "
        f"{'-' if p50 is None else f'{p50:.1f}'} ms  {loss}"
    )


def _run_peers(
    args: argparse.Namespace, ctx: Any, workload: Any, peers: list[str], guarantees: list[str]
) -> list[dict[str, Any]]:
    from benchmarks.stream_peers import run_peers

    count = args.peer_records or args.records
    return run_peers(ctx, workload, peers, guarantees, count, args.rounds, args.peer_warmup)


def _run_avro_workload(
    args: argparse.Namespace,
    out: Path,
    logs: Path,
    machine: dict[str, Any],
    peers: list[str],
    guarantees: list[str],
    started: float,
) -> int:
    """``--workload avro``: the Avro comparison alone, its own section of results.json."""
    from benchmarks import stream_avro, stream_avro_report, stream_plots
    from benchmarks.common import nan_to_none, write_json

    try:
        with contextlib.ExitStack() as stack:
            registry_url = stack.enter_context(
                stream_avro.schema_registry(getattr(args, "schema_registry_url", None))
            )
            kafka, broker_pid = _broker(args, stack)
            ctx = _context(args, kafka, broker_pid, logs)
            runs = stream_avro.run_avro(
                ctx, args.work_dir or out / "models", registry_url, peers, guarantees,
                args.peer_records or args.records, args.rounds, args.peer_warmup,
            )  # fmt: skip
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    machine["load_average_end"] = list(os.getloadavg())
    title = (
        f"python -m benchmarks stream --workload avro — fraud model, {machine['cpus']} CPUs "
        f"({machine['cpu_model']})"
    )
    section = stream_avro_report.avro_section(runs, stream_plots, out / "avro_peers.png", title)
    outputs_ok = all(
        entry["outputs_ok"] for systems in section["summary"].values() for entry in systems.values()
    )
    document = {
        "command": " ".join(sys.argv),
        "machine": machine,
        "seconds": round(time.time() - started, 1),
        "workload": "avro",
        "schema_registry": registry_url,
        "avro": section,
        "no_records_lost": outputs_ok,
    }
    write_json(out / "results.json", nan_to_none(document))
    print(_machine_line(machine))
    print()
    print(stream_avro_report.avro_text(section))
    print(f"\n0-lost check: {'passed' if outputs_ok else 'FAILED'}; results in {out}")
    return 0 if outputs_ok else 1


def _run_outages(args: argparse.Namespace, ctx: Any, workload: Any) -> list[dict[str, Any]]:
    from benchmarks.stream_outage import run_outage

    rate = args.outage_rate or (10.0 if workload.model == "imagenet" else 1000.0)
    results = []
    for fallback in (False, True):
        result = run_outage(
            ctx,
            workload,
            args.server_down_at,
            args.server_down_for,
            rate,
            args.outage_recovery_s,
            fallback,
        )
        print(result["loss_line"], file=sys.stderr, flush=True)
        results.append(result)
    return results


# --------------------------------------------------------------------------- report


def _report(
    args: argparse.Namespace,
    out: Path,
    machine: dict[str, Any],
    runs: dict[str, list[dict[str, Any]]],
    outages: list[dict[str, Any]],
    seconds: float,
    peer_runs: list[dict[str, Any]] | None = None,
) -> int:
    from benchmarks import stream_peers_report as peers_report
    from benchmarks import stream_plots
    from benchmarks.common import nan_to_none, write_json
    from benchmarks.stream_outage import BUCKET_S
    from benchmarks.stream_report import evaluate_goals, goals_text, model_summary, table

    summaries = {model: model_summary(model_runs) for model, model_runs in runs.items()}
    goals = evaluate_goals(summaries) if summaries else []
    figures = _plots(out, machine, summaries, runs, outages, BUCKET_S, stream_plots)
    peers = _peers_section(out, machine, peer_runs or [], peers_report, stream_plots, figures)
    loss_ok = (
        all(e["no_loss"] for s in summaries.values() for e in s.values())
        and all(o["loss"]["ok"] for o in outages)
        and all(e["outputs_ok"] for s in peers.get("summary", {}).values() for e in s.values())
    )
    document = {
        "command": " ".join(sys.argv),
        "machine": machine,
        "seconds": round(seconds, 1),
        "config": {
            k: (str(v) if isinstance(v, Path) else v)
            for k, v in vars(args).items()
            if not k.startswith("_") and not callable(v)
        },
        "timestamps": "broker LogAppendTime on input and output topics (one clock)",
        "summary": summaries,
        "goals": goals,
        "outage": outages,
        "peers": peers,
        "no_records_lost": loss_ok,
        "figures": [p.name for p in figures],
        "runs": runs,
    }
    write_json(out / "results.json", nan_to_none(document))
    print(_machine_line(machine))
    for model, summary in summaries.items():
        print()
        print(table(model, summary))
    if goals:
        print()
        print(goals_text(goals))
    if peers:
        print()
        print(peers_report.peers_table(peers["summary"]))
        if peers_report.has_steady(peers["summary"]):
            print()
            print(peers_report.steady_table(peers["summary"]))
        print()
        print(peers_report.peer_goals_text(peers["goals"]))
    for outage in outages:
        print(outage["loss_line"])
    print(f"\n0-lost check: {'passed' if loss_ok else 'FAILED'}; results in {out}")
    return 0 if loss_ok else 1


def _peers_section(
    out: Path,
    machine: dict[str, Any],
    peer_runs: list[dict[str, Any]],
    report: Any,
    plots: Any,
    figures: list[Path],
) -> dict[str, Any]:
    """The peers' summary, goals and raw runs for results.json (and ``peers.png``)."""
    if not peer_runs:
        return {}
    summary = report.peers_summary(peer_runs)
    title = (
        f"python -m benchmarks stream --peers — tiny model, {machine['cpus']} CPUs "
        f"({machine['cpu_model']})"
    )
    figures.append(plots.peer_bars(out / "peers.png", summary, title))
    return {"summary": summary, "goals": report.peer_goals(summary), "runs": peer_runs}


def _machine_line(machine: dict[str, Any]) -> str:
    start = ", ".join(f"{v:.1f}" for v in machine["load_average_start"])
    return (
        f"machine: {machine['cpus']} CPUs ({machine['cpu_model']}), "
        f"{machine['memory_gib']} GiB, Python {machine['python']}; load average at start "
        f"{start} (other work shares these cores)"
    )


def _plots(
    out: Path,
    machine: dict[str, Any],
    summaries: dict[str, Any],
    runs: dict[str, list[dict[str, Any]]],
    outages: list[dict[str, Any]],
    bucket_s: float,
    plots: Any,
) -> list[Path]:
    note = f"{machine['cpus']} CPUs, closed loop"  # the window differs per model (see JSON)
    figures = []
    for model, model_runs in runs.items():
        samples: dict[str, list[float]] = {}
        for run in model_runs:
            samples.setdefault(run["mode"], []).extend(run["latency"]["e2e_samples_ms"])
        figures.append(plots.latency_cdf(out / f"latency_cdf_{model}.png", model, samples, note))
    per_model = {
        model: {mode: entry["throughput_rps"] for mode, entry in summary.items()}
        for model, summary in summaries.items()
    }
    if not per_model:
        return figures
    figures.append(
        plots.throughput_bars(
            out / "throughput.png",
            per_model,
            f"python -m benchmarks stream — {machine['cpus']} CPUs ({machine['cpu_model']})",
        )
    )
    if outages:
        figures.append(plots.outage_timeline(out / "outage_timeline.png", outages, bucket_s))
    return figures
