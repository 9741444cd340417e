"""``python -m benchmarks server``: closed-loop load on streamserve against its peers.

Targets, all on the same tiny ONNX model (x[N,64] → Gemm 64×64 → Relu) and the same
request bytes:

- raw onnxruntime in this process (calls/s: the ceiling no server reaches);
- streamserve (``streamserve serve`` child process): TF Serving gRPC ``Predict``, V2 gRPC
  ``ModelInfer`` (raw contents), TF REST ``:predict`` (``instances``), V2 REST ``/infer``;
- MLServer (when installed, see ``benchmarks/mlserver/``): V2 gRPC and V2 REST;
- a minimal hand-written grpc.aio V2 server (``benchmarks/minimal_grpc/``): the floor;
- ``streamserve serve --workers 2`` (``streamserve-workers2``): V2 gRPC and REST at batch 1,
  against the one-worker server of the same run (``--no-workers`` leaves it out).

Each scenario runs every target back to back (the order rotates every round), so slow
drifts of a shared machine hit all of them alike. gRPC load comes from separate client
processes (grpc.aio, raw bytes); REST load from ``wrk`` when installed, else aiohttp.
Server CPU per request is read from ``/proc/<pid>/stat``. Then the heavy model (the
ImageNet classifier's ``tensor`` signature): single-image V2 gRPC requests to a
streamserve with dynamic batching against raw onnxruntime's batched throughput.

Writes ``results.json`` and ``results.png`` into ``--out`` and prints the tables.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.report import WORKERS_BATCH, WORKERS_SCENARIOS, WORKERS_TARGET

HELP = "Benchmark the model server against raw onnxruntime, MLServer and a minimal grpc.aio server"
SCENARIOS = ("tf-grpc", "v2-grpc", "tf-rest", "v2-rest")
PROTOCOL_ALIASES = {
    "grpc": ("tf-grpc", "v2-grpc"),
    "rest": ("tf-rest", "v2-rest"),
    "tf": ("tf-grpc", "tf-rest"),
    "tfserving": ("tf-grpc", "tf-rest"),
    "v2": ("v2-grpc", "v2-rest"),
    "all": SCENARIOS,
}
TINY = "tiny"
HEAVY = "imagenet"
HEAVY_SIGNATURE = "tensor"
GRPC_METHODS = {
    "tf": "/tensorflow.serving.PredictionService/Predict",
    "v2": "/inference.GRPCInferenceService/ModelInfer",
}


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--concurrency", type=int, default=16, help="closed-loop clients")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds measured per run")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds of warm-up per run")
    parser.add_argument("--rounds", type=int, default=3,
                        help="alternating rounds; tables show the median")  # fmt: skip
    parser.add_argument("--out", type=Path, default=Path("bench-results/server"),
                        help="folder for results.json, results.png and server logs")  # fmt: skip
    parser.add_argument("--protocols", default="all",
                        help="comma list of tf-grpc, v2-grpc, tf-rest, v2-rest "
                             "(or grpc, rest, tf, v2, all)")  # fmt: skip
    parser.add_argument("--batch-sizes", default="1,32", help="rows per request, comma list")
    parser.add_argument("--skip-mlserver", action="store_true", help="do not run MLServer")
    parser.add_argument("--mlserver-bin", help="the mlserver executable (default: PATH, "
                        "then ~/.venvs/mlserver/bin/mlserver)")  # fmt: skip
    parser.add_argument("--skip-minimal", action="store_true", help="no minimal grpc.aio server")
    parser.add_argument("--workers", action=argparse.BooleanOptionalAction, default=True,
                        help="also serve --workers 2 (V2 gRPC and REST, batch 1)")  # fmt: skip
    parser.add_argument("--tiny", action=argparse.BooleanOptionalAction, default=True,
                        help="the tiny-model runs (--no-tiny: heavy model only)")  # fmt: skip
    parser.add_argument("--heavy", action=argparse.BooleanOptionalAction, default=True,
                        help="also the ImageNet classifier with dynamic batching")  # fmt: skip
    parser.add_argument("--heavy-duration", type=float, default=8.0, help="seconds measured")
    parser.add_argument("--heavy-max-batch-size", type=int, default=32)
    parser.add_argument("--heavy-batch-timeout-micros", type=int, default=2000)
    parser.add_argument("--heavy-batch-threads", type=int, default=1)
    parser.add_argument("--client-processes", type=int, default=2,
                        help="processes generating gRPC (and aiohttp) load")  # fmt: skip
    parser.add_argument(
        "--grpc-client",
        choices=("auto", "h2load", "grpcio"),
        default="auto",
        help="gRPC load: h2load (C; auto when installed) or grpc.aio client processes",
    )
    parser.add_argument(
        "--grpc-connections",
        type=int,
        default=0,
        help="HTTP/2 connections carrying the gRPC clients (0 = one per client)",
    )
    parser.add_argument("--rest-client", choices=("auto", "wrk", "aiohttp"), default="auto")
    parser.add_argument("--models-dir", type=Path,
                        default=Path("~/.cache/streamserve/bench-models").expanduser(),
                        help="where the tiny and ImageNet models are built (cached)")  # fmt: skip


def parse_protocols(text: str) -> list[str]:
    chosen: list[str] = []
    for item in filter(None, (part.strip().lower() for part in text.split(","))):
        names = PROTOCOL_ALIASES.get(item, (item,))
        for name in names:
            if name not in SCENARIOS:
                raise argparse.ArgumentTypeError(f"unknown protocol {item!r}")
            if name not in chosen:
                chosen.append(name)
    return [name for name in SCENARIOS if name in chosen]


def parse_batch_sizes(text: str) -> list[int]:
    try:
        sizes = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--batch-sizes: expected integers, got {text!r}"
        ) from None
    if not sizes or sizes[0] < 1:
        raise argparse.ArgumentTypeError("--batch-sizes: give positive integers")
    return sizes


# -- requests --------------------------------------------------------------------------------


def tiny_inputs(batch: int, width: int = 64, seed: int = 1) -> Any:
    import numpy as np

    return np.random.default_rng(seed).standard_normal((batch, width)).astype(np.float32)


def v2_grpc_request(model: str, inputs: dict[str, Any], signature: str = "") -> bytes:
    from streamserve.protos.v2 import grpc_service_pb2 as pb
    from streamserve.tensors import dtype_to_v2

    request = pb.ModelInferRequest(model_name=model)
    for name, array in inputs.items():
        request.inputs.add(name=name, datatype=dtype_to_v2(array.dtype), shape=array.shape)
        request.raw_input_contents.append(array.tobytes())
    if signature:
        request.parameters["signature_name"].string_param = signature
    return request.SerializeToString()


def tf_grpc_request(model: str, inputs: dict[str, Any], signature: str = "") -> bytes:
    from streamserve.protos.tfs import predict_pb2
    from streamserve.tensors import numpy_to_tensor_proto

    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    if signature:
        request.model_spec.signature_name = signature
    for name, array in inputs.items():
        request.inputs[name].CopyFrom(numpy_to_tensor_proto(array))
    return request.SerializeToString()


def tf_rest_body(inputs: dict[str, Any]) -> bytes:
    import orjson

    (array,) = inputs.values()
    return orjson.dumps({"instances": array.tolist()})


def v2_rest_body(inputs: dict[str, Any]) -> bytes:
    import orjson

    from streamserve.tensors import dtype_to_v2

    tensors = [{"name": name, "shape": list(array.shape), "datatype": dtype_to_v2(array.dtype),
                "data": array.reshape(-1).tolist()} for name, array in inputs.items()]  # fmt: skip
    return orjson.dumps({"inputs": tensors})


def rest_url(base: str, model: str, scenario: str) -> str:
    if scenario == "tf-rest":
        return f"{base}/v1/models/{model}:predict"
    return f"{base}/v2/models/{model}/infer"


def decode_answer(scenario: str, body: bytes) -> Any:
    """The first output of a response, as numpy: used to check every target once."""
    import numpy as np
    import orjson

    if scenario == "v2-grpc":
        from streamserve.protos.v2 import grpc_service_pb2 as pb

        response = pb.ModelInferResponse.FromString(body)
        tensor = response.outputs[0]
        if response.raw_output_contents:
            flat = np.frombuffer(response.raw_output_contents[0], np.float32)
        else:
            flat = np.asarray(tensor.contents.fp32_contents, np.float32)
        return flat.reshape(tuple(tensor.shape))
    if scenario == "tf-grpc":
        from streamserve.protos.tfs import predict_pb2
        from streamserve.tensors import tensor_proto_to_numpy

        response = predict_pb2.PredictResponse.FromString(body)
        return tensor_proto_to_numpy(next(iter(response.outputs.values())))
    document = orjson.loads(body)
    if scenario == "tf-rest":
        return np.asarray(document["predictions"], np.float32)
    output = document["outputs"][0]
    return np.asarray(output["data"], np.float32).reshape(output["shape"])


def send_once(scenario: str, address: str, model: str, payload: bytes) -> bytes:
    """One request with plain blocking clients (grpc / urllib), for the answer check."""
    if scenario.endswith("grpc"):
        import grpc

        with grpc.insecure_channel(address) as channel:
            method = channel.unary_unary(GRPC_METHODS[scenario.split("-")[0]])
            return bytes(method(payload, timeout=30))
    import urllib.request

    request = urllib.request.Request(rest_url(address, model, scenario), data=payload,
                                     headers={"Content-Type": "application/json"})  # fmt: skip
    with urllib.request.urlopen(request, timeout=30) as response:
        return bytes(response.read())


# -- raw onnxruntime --------------------------------------------------------------------------


def open_session(model_path: Path) -> Any:
    """An ORT session configured like streamserve's ONNX runtime (all graph optimisations,
    ORT's default thread count)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])


def measure_raw(session: Any, feeds: dict[str, Any], rows: int, duration: float) -> dict[str, Any]:
    """Back-to-back ``session.run`` calls on one thread for ``duration`` seconds."""
    from benchmarks.common import percentile

    warm_until = time.perf_counter() + 1.0
    for _ in range(20):  # warm-up: 20 calls or one second, whichever ends first
        session.run(None, feeds)
        if time.perf_counter() > warm_until:
            break
    latencies: list[float] = []
    ends = time.perf_counter() + duration
    began = time.perf_counter()
    now = began
    while now < ends:
        start = now
        session.run(None, feeds)
        now = time.perf_counter()
        latencies.append(now - start)
    seconds = now - began
    calls = len(latencies)
    return {
        "batch": rows,
        "calls": calls,
        "seconds": seconds,
        "calls_per_s": calls / seconds,
        "rows_per_s": calls * rows / seconds,
        "p50_ms": 1000 * percentile(latencies, 50),
        "p99_ms": 1000 * percentile(latencies, 99),
    }


# -- the benchmark -----------------------------------------------------------------------------


@dataclass
class Plan:
    scenarios: list[str]
    batches: list[int]
    targets: dict[str, Any]  # name → a started server process
    use_wrk: bool
    use_h2load: bool
    payloads: dict[tuple[str, int], bytes] = field(default_factory=dict)
    answer_bytes: dict[tuple[str, str, int], int] = field(default_factory=dict)

    def pairs(self) -> list[tuple[str, int]]:
        return [(scenario, batch) for batch in self.batches for scenario in self.scenarios]

    def targets_for(self, scenario: str, batch: int) -> list[str]:
        names = []
        for name in self.targets:
            if name.startswith("minimal") and scenario != "v2-grpc":
                continue
            if name == "mlserver" and not scenario.startswith("v2"):
                continue
            if name == WORKERS_TARGET and (
                scenario not in WORKERS_SCENARIOS or batch != WORKERS_BATCH
            ):
                continue
            names.append(name)
        return names


def run(args: argparse.Namespace) -> int:
    from benchmarks import report

    scenarios = parse_protocols(args.protocols)
    batches = parse_batch_sizes(args.batch_sizes)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    notes: list[str] = [f"machine: {os.cpu_count()} cores shared with the load generator "
                        "(client processes, wrk) and anything else running"]  # fmt: skip
    with contextlib.ExitStack() as stack:
        records: list[dict[str, Any]] = []
        raw: dict[int, dict[str, Any]] = {}
        plan = None
        if args.tiny:
            records, raw, plan = _run_tiny(args, scenarios, batches, out, notes, stack)
        heavy = None
        if args.heavy:
            from benchmarks.heavy import run_heavy

            heavy = run_heavy(args, out, notes, stack)
    meta = _meta(args, scenarios, batches, plan)
    load_after = os.getloadavg()
    meta["loadavg_1m_before_after"] = [load_before[0], load_after[0]]
    notes.append(
        f"1-minute load average {load_before[0]:.1f} before, {load_after[0]:.1f} after "
        f"({os.cpu_count()} cores): other work on the machine skews absolute figures"
    )
    document = report.results_document(meta, records, raw, heavy, notes)
    from benchmarks.common import nan_to_none, write_json

    document = nan_to_none(document)
    json_path = write_json(out / "results.json", document)
    png_path = report.plot_results(out / "results.png", document)
    print(report.format_rows(document["rows"], raw))
    print()
    print(report.format_ratios(report.compute_ratios(document["rows"], batches, heavy)))
    print()
    print(report.format_heavy(heavy))
    for note in notes:
        print(f"note: {note}")
    print(f"wrote {json_path} and {png_path}")
    return 0


def _meta(
    args: argparse.Namespace, scenarios: list[str], batches: list[int], plan: Plan | None
) -> dict[str, Any]:
    import grpc
    import onnxruntime

    return {
        "concurrency": args.concurrency,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "rounds": args.rounds,
        "scenarios": scenarios,
        "batch_sizes": batches,
        "targets": list(plan.targets) if plan else [],
        "client_processes": args.client_processes,
        "rest_client": None if plan is None else "wrk" if plan.use_wrk else "aiohttp",
        "grpc_client": None if plan is None else "h2load" if plan.use_h2load else "grpc.aio",
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
        "grpcio": grpc.__version__,
        "platform": platform.platform(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _start_targets(args: argparse.Namespace, tiny_dir: Path, out: Path, notes: list[str],
                   stack: contextlib.ExitStack) -> dict[str, Any]:  # fmt: skip
    from benchmarks import targets as t

    logs = out / "logs"
    servers: dict[str, Any] = {}
    servers["streamserve"] = stack.enter_context(stopping(t.start_streamserve(
        "streamserve", TINY, tiny_dir.parent, logs)))  # fmt: skip
    if args.workers:
        servers[WORKERS_TARGET] = stack.enter_context(stopping(t.start_streamserve(
            WORKERS_TARGET, TINY, tiny_dir.parent, logs, ["--workers=2"])))  # fmt: skip
    if args.skip_mlserver:
        notes.append("MLServer skipped (--skip-mlserver)")
    else:
        binary = t.find_mlserver(args.mlserver_bin)
        if binary is None:
            notes.append(
                "MLServer skipped: no mlserver executable (see benchmarks/mlserver/README.md)"
            )
        else:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="mlserver-repo-")))
            repository = t.prepare_mlserver_repository(work, TINY, tiny_dir / "model.onnx")
            servers["mlserver"] = stack.enter_context(stopping(
                t.start_mlserver(binary, repository, TINY, logs)))  # fmt: skip
            notes.append(f"MLServer {t.mlserver_version(binary)} ({binary}), parallel_workers=0, "
                         "custom onnxruntime runtime from benchmarks/mlserver/")  # fmt: skip
    if not args.skip_minimal:
        model = tiny_dir / "model.onnx"
        servers["minimal"] = stack.enter_context(stopping(t.start_minimal(model, TINY, logs)))
        if t.uvloop_available():  # the floor on the event loop streamserve itself runs on
            servers["minimal-uvloop"] = stack.enter_context(
                stopping(t.start_minimal(model, TINY, logs, loop="uvloop"))
            )

    return servers


@contextlib.contextmanager
def stopping(server: Any) -> Any:
    try:
        yield server
    finally:
        server.stop()


def _run_tiny(args: argparse.Namespace, scenarios: list[str], batches: list[int], out: Path,
              notes: list[str], stack: contextlib.ExitStack,
              ) -> tuple[list[dict[str, Any]], dict[int, dict[str, Any]], Plan]:  # fmt: skip
    from benchmarks.common import ClientPool, progress
    from benchmarks.loadtools import h2load_available, wrk_available
    from streamserve.models.cli import build_model

    tiny_dir = build_model(TINY, args.models_dir / TINY)
    session = open_session(tiny_dir / "model.onnx")
    raw = {batch: measure_raw(session, {"x": tiny_inputs(batch)}, batch, min(3.0, args.duration))
           for batch in batches}  # fmt: skip
    use_wrk = args.rest_client == "wrk" or (args.rest_client == "auto" and wrk_available())
    if any(s.endswith("rest") for s in scenarios) and not use_wrk:
        why = "--rest-client aiohttp" if args.rest_client == "aiohttp" else "wrk not installed"
        notes.append(f"REST load from aiohttp client processes ({why})")
    use_h2load = args.grpc_client == "h2load" or (args.grpc_client == "auto" and h2load_available())
    if any(s.endswith("grpc") for s in scenarios) and not use_h2load:
        why = "--grpc-client grpcio" if args.grpc_client == "grpcio" else "h2load not installed"
        notes.append(f"gRPC load from grpc.aio client processes ({why})")
    servers = _start_targets(args, tiny_dir, out, notes, stack)
    plan = Plan(scenarios, batches, servers, use_wrk, use_h2load)
    _prepare_requests(plan, session)
    needs_pool = (not use_h2load and any(s.endswith("grpc") for s in scenarios)) or (
        not use_wrk and any(s.endswith("rest") for s in scenarios)
    )
    pool = stack.enter_context(ClientPool(args.client_processes)) if needs_pool else None
    steps = [(round_index, scenario, batch, target)
             for round_index in range(args.rounds)
             for scenario, batch in plan.pairs()
             for target in _rotate(plan.targets_for(scenario, batch), round_index)]  # fmt: skip
    records: list[dict[str, Any]] = []
    with progress(len(steps), "bench server") as bar:
        for round_index, scenario, batch, target in steps:
            bar.set_postfix_str(f"{target} {scenario} b{batch}")
            result = _measure(args, plan, pool, target, scenario, batch)
            protocol, transport = scenario.split("-")
            records.append({"target": target, "protocol": protocol, "transport": transport,
                            "batch": batch, "round": round_index, **result.to_json()})  # fmt: skip
            bar.update()
    return records, raw, plan


def _rotate(items: list[str], by: int) -> list[str]:
    if not items:
        return items
    shift = by % len(items)
    return items[shift:] + items[:shift]


def _prepare_requests(plan: Plan, session: Any) -> None:
    """Request bytes per (scenario, batch), each checked once against every target (whose
    answer length is kept: h2load counts failed gRPC calls by their missing answers)."""
    import numpy as np

    builders: dict[str, Callable[[dict[str, Any]], bytes]] = {
        "tf-grpc": lambda inputs: tf_grpc_request(TINY, inputs),
        "v2-grpc": lambda inputs: v2_grpc_request(TINY, inputs),
        "tf-rest": tf_rest_body,
        "v2-rest": v2_rest_body,
    }
    for scenario, batch in plan.pairs():
        inputs = {"x": tiny_inputs(batch)}
        expected = session.run(None, inputs)[0]
        plan.payloads[(scenario, batch)] = payload = builders[scenario](inputs)
        for name in plan.targets_for(scenario, batch):
            server = plan.targets[name]
            address = server.grpc_target if scenario.endswith("grpc") else server.rest_url
            body = send_once(scenario, address, TINY, payload)
            answer = decode_answer(scenario, body)
            if answer.shape != expected.shape or not np.allclose(answer, expected, atol=1e-4):
                raise RuntimeError(f"{name} answered {scenario} batch {batch} wrongly")
            plan.answer_bytes[(name, scenario, batch)] = len(body)


def _measure(args: argparse.Namespace, plan: Plan, pool: Any, target: str, scenario: str,
             batch: int) -> Any:  # fmt: skip
    from benchmarks.common import LoadJob
    from benchmarks.loadtools import run_h2load_grpc, run_wrk

    server = plan.targets[target]
    payload = plan.payloads[(scenario, batch)]
    if scenario.endswith("grpc"):
        method = GRPC_METHODS[scenario.split("-")[0]]
        connections = args.grpc_connections or args.concurrency
        if plan.use_h2load:
            return run_h2load_grpc(server.grpc_target, method, payload, args.concurrency,
                                   connections, args.duration, args.warmup, server.pid,
                                   plan.answer_bytes[(target, scenario, batch)])  # fmt: skip
        channels = max(1, connections // pool.size)
        job = LoadJob(
            "grpc", server.grpc_target, method, payload, args.concurrency, channels=channels
        )
        return pool.run(job, args.warmup, args.duration, server.pid, f"grpc.aio x{pool.size} procs")
    url = rest_url(server.rest_url, TINY, scenario)
    if plan.use_wrk:
        return run_wrk(url, payload, args.concurrency, args.duration, args.warmup, server.pid)
    job = LoadJob("http", url, "", payload, args.concurrency)
    return pool.run(job, args.warmup, args.duration, server.pid, "aiohttp")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks server", description=HELP)
    configure(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
