"""``python -m benchmarks stream --peers``: streamserve embedded against what its users would pick.

The peers do the same job as streamserve's embedded processor (tiny model, the same
tensor-JSON records, one instance, the same commit interval) on the same broker:

==================  ===========================================================================
``quix``            Quix Streams (``sdf.apply`` + ONNX Runtime, one call per record):
                    ``peers/quix/app.py``, in its own virtual environment created from the
                    pinned ``peers/quix/requirements.txt`` (under the streamserve cache)
``kafka-streams``   Kafka Streams (``mapValues`` + ONNX Runtime Java, one call per record):
                    ``peers/kstreams/`` (``pom.xml`` + ``App.java``), built with Maven into a
                    jar cached under a digest of its sources
==================  ===========================================================================

Each round runs, per guarantee (exactly-once, at-least-once), streamserve embedded and
then each peer on fresh topics, one drain each (:func:`benchmarks.stream_run.measure_drain`:
records/s from the first model call to the last output's log-append time, CPU seconds of
the processor process — for Kafka Streams the JVM, its JIT compiler threads also apart —
from ``/proc``). The same drain also gives *steady* figures over the records after the
first ``warmup`` share (default half): a cold JVM spends the start of a drain compiling.
Every system's output is checked the same way
(:func:`benchmarks.stream_stats.check_values`): each input has exactly one read_committed
output and its values equal the model's (computed here with ONNX Runtime) within 1e-4,
so a broken peer cannot look fast.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import BENCHMARKS_DIR
from benchmarks import stream_io as kio
from benchmarks.common import parse_proc_stat_cpu
from benchmarks.stream_modes import MODES, Workload
from benchmarks.stream_run import (
    BenchContext,
    measure_drain,
    start_worker,
    worker_calls,
    worker_spec,
)
from benchmarks.stream_stats import check_values, summarize
from streamserve.errors import FailedPrecondition
from streamserve.kafka.admin import client_settings
from streamserve.processes import ChildProcess

PEERS_DIR = BENCHMARKS_DIR / "peers"
QUIX_DIR = PEERS_DIR / "quix"
KSTREAMS_DIR = PEERS_DIR / "kstreams"
STREAMSERVE = "streamserve"
GUARANTEES = ("exactly-once", "at-least-once")
COMMIT_INTERVAL_MS = 100  # streamserve's default; the peers are given the same
READY_PREFIX = "peer ready:"
FIRST_CALL = re.compile(r"^peer first call at (\d+)", re.MULTILINE)
MODEL_CALLS = re.compile(r"^peer model calls: (\d+)", re.MULTILINE)
SETUP_TIMEOUT_S = 900.0
JIT_THREADS = ("C1 CompilerThre", "C2 CompilerThre")  # HotSpot's names, cut to 15 chars


@dataclass(frozen=True)
class Peer:
    name: str
    label: str


PEERS: dict[str, Peer] = {
    peer.name: peer
    for peer in (
        Peer("quix", "Quix Streams 3.28, sdf.apply + ONNX Runtime"),
        Peer("kafka-streams", "Kafka Streams 4.4 + ONNX Runtime Java"),
    )
}
LABELS = {STREAMSERVE: "streamserve (embedded)", **{p.name: p.label for p in PEERS.values()}}


class PeerSetupError(FailedPrecondition):
    """A peer could not be prepared (virtual environment, Maven build, missing tool);
    ``python -m benchmarks`` prints it as ``error: ...`` and exits with 2."""


def parse_peers(text: str) -> list[str]:
    """``"quix,kafka-streams"`` → the peer names, in order, without repeats."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in PEERS]
    if unknown or not names:
        raise ValueError(f"unknown peer(s) {unknown or text!r}; choose from {', '.join(PEERS)}")
    return list(dict.fromkeys(names))


def parse_guarantees(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in GUARANTEES]
    if unknown or not names:
        raise ValueError(f"unknown guarantee(s) {unknown or text!r}; choose from exactly-once, "
                         "at-least-once")  # fmt: skip
    return list(dict.fromkeys(names))


def cache_dir() -> Path:
    """Where the peers' virtual environment and jar are kept (``<streamserve cache>/peers``)."""
    from streamserve.kafka.jars import cache_root

    return cache_root() / "peers"


# --------------------------------------------------------------------------- set-up


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """One preparer at a time per cached artefact (several benchmark runs may share it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _run_step(command: Sequence[str], log_path: Path, what: str, cwd: Path | None = None) -> None:
    """Run a set-up command to completion (output appended to ``log_path``)."""
    step = ChildProcess(command, log_path, cwd=cwd, name=what)
    step.start()
    try:
        code = step.wait(SETUP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        step.stop()
        raise PeerSetupError(
            f"{what}: not done within {SETUP_TIMEOUT_S:g} s; see {log_path}"
        ) from None
    if code != 0:
        raise PeerSetupError(f"{what} failed (exit {code}); {step.failure_context()}")


def quix_python(cache: Path, log_path: Path) -> Path:
    """The Python of the Quix peer's virtual environment, created (pinned) if missing or stale."""
    requirements = QUIX_DIR / "requirements.txt"
    wanted = requirements.read_text()
    venv = cache / "quix-venv"
    marker = venv / ".streamserve-requirements"
    python = venv / "bin" / "python"
    with _locked(cache / "quix-venv.lock"):
        if marker.exists() and marker.read_text() == wanted and python.exists():
            return python
        print(f"creating the Quix Streams peer's environment in {venv} ...", file=sys.stderr)
        shutil.rmtree(venv, ignore_errors=True)
        _run_step([sys.executable, "-m", "venv", str(venv)], log_path, "python -m venv")
        pip = [str(python), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
        _run_step([*pip, "-r", str(requirements)], log_path, "pip install (Quix peer)")
        marker.write_text(wanted)
    return python


def source_digest(root: Path) -> str:
    """SHA-256 over ``pom.xml`` and ``src/`` (relative paths and contents) under ``root``."""
    digest = hashlib.sha256()
    files = [root / "pom.xml", *sorted(p for p in (root / "src").rglob("*") if p.is_file())]
    for path in files:
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def kstreams_jar(cache: Path, log_path: Path) -> Path:
    """The Kafka Streams peer's jar: built with Maven (in a copy under the cache) unless a
    jar for the current sources is there already."""
    folder = cache / "kstreams"
    jar = folder / f"kstreams-peer-{source_digest(KSTREAMS_DIR)[:16]}.jar"
    with _locked(cache / "kstreams.lock"):
        if jar.exists():
            return jar
        for tool in ("mvn", "java"):
            if shutil.which(tool) is None:
                raise PeerSetupError(f"the Kafka Streams peer needs {tool!r} on PATH")
        print(f"building the Kafka Streams peer with Maven into {jar} ...", file=sys.stderr)
        build = folder / "build"
        shutil.rmtree(build, ignore_errors=True)
        build.mkdir(parents=True)
        shutil.copy2(KSTREAMS_DIR / "pom.xml", build / "pom.xml")
        shutil.copytree(KSTREAMS_DIR / "src", build / "src")
        _run_step(["mvn", "-B", "-q", "package", "-DskipTests"], log_path, "mvn package", build)
        built = build / "target" / "kstreams-peer.jar"
        partial = jar.with_suffix(".partial")
        shutil.copy2(built, partial)
        partial.replace(jar)
        shutil.rmtree(build, ignore_errors=True)
        for stale in folder.glob("kstreams-peer-*.jar"):
            if stale != jar:
                stale.unlink(missing_ok=True)  # built from older sources (~150 MB each)
    return jar


@dataclass
class PeerSetup:
    """What the peers need, prepared once per benchmark run."""

    quix_python: Path | None = None
    kstreams_jar: Path | None = None

    @classmethod
    def prepare(cls, peers: Sequence[str], cache: Path, logs: Path) -> PeerSetup:
        setup = cls()
        if "quix" in peers:
            setup.quix_python = quix_python(cache, logs / "peer-setup.quix.log")
        if "kafka-streams" in peers:
            setup.kstreams_jar = kstreams_jar(cache, logs / "peer-setup.kstreams.log")
        return setup

    def command(
        self, peer: str, topics: tuple[str, str, str], bootstrap: str, model: Path, guarantee: str
    ) -> list[str]:
        """The peer's command line (both apps take the same positional arguments)."""
        in_topic, out_topic, group = topics
        args = [bootstrap, in_topic, out_topic, group, str(model), guarantee,
                str(COMMIT_INTERVAL_MS)]  # fmt: skip
        if peer == "quix":
            assert self.quix_python is not None
            return [str(self.quix_python), str(QUIX_DIR / "app.py"), *args]
        if peer == "kafka-streams":
            assert self.kstreams_jar is not None
            return ["java", "-Xmx512m", "-jar", str(self.kstreams_jar), *args]
        raise ValueError(f"unknown peer {peer!r}")


class StreamPeerProcess(ChildProcess):
    """A peer app: ready at its ``peer ready:`` line; reports its first model call's time
    and its number of model calls on stdout (read back from the log)."""

    ready_prefix = READY_PREFIX

    def __init__(self, command: Sequence[str], log_path: Path, name: str) -> None:
        # The Quix peer's interpreter must not see this checkout's PYTHONPATH; it runs in
        # the log folder, where Quix puts its (unused) ``state`` folder.
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        super().__init__(command, log_path, base_env=env, cwd=log_path.parent, name=name)

    def calls(self) -> tuple[dict[str, Any], float | None]:
        return peer_calls(self.log_text())

    def cpu_breakdown(self) -> dict[str, float | None]:
        """Part of the processor's CPU: a JVM's JIT compiler threads (a cold JVM compiles
        while it processes; the processor figure includes them)."""
        if self.command[0] != "java" or not self.running():
            return {}
        return {"processor_jit": thread_cpu_seconds(self.pid, JIT_THREADS)}


def thread_cpu_seconds(pid: int, name_prefixes: Sequence[str]) -> float | None:
    """CPU seconds of ``pid``'s threads whose name starts with one of ``name_prefixes``."""
    ticks = os.sysconf("SC_CLK_TCK")
    tasks = Path(f"/proc/{pid}/task")
    if not tasks.exists():
        return None
    total = 0.0
    for task in tasks.iterdir():
        try:
            stat = (task / "stat").read_text()
        except OSError:
            continue  # the thread ended
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        if name.startswith(tuple(name_prefixes)):
            total += parse_proc_stat_cpu(stat, ticks)
    return total


def peer_calls(log_text: str) -> tuple[dict[str, Any], float | None]:
    """A peer's model-call summary (one row per call) and first call's wall-clock ms."""
    first = FIRST_CALL.search(log_text)
    counted = MODEL_CALLS.findall(log_text)
    calls = int(counted[-1]) if counted else None
    summary = {
        "latency_ms": summarize([]),
        "calls": calls,
        "rows_per_call": 1.0 if calls else None,
        "failed_calls": None,
    }
    return summary, float(first.group(1)) if first else None


# --------------------------------------------------------------------------- runs


def expected_outputs(
    model_path: Path, records: Sequence[kio.BenchRecord], input_name: str = "x"
) -> dict[bytes, np.ndarray]:
    """The model's output row for each record's key (ONNX Runtime here, one batch)."""
    import onnxruntime as ort
    import orjson

    rows = np.concatenate(
        [np.asarray(orjson.loads(r.value)["inputs"][input_name], np.float32) for r in records]
    )
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    (outputs,) = session.run(None, {input_name: rows})[:1]
    return {record.key: outputs[i] for i, record in enumerate(records)}


def run_system(
    ctx: BenchContext,
    workload: Workload,
    setup: PeerSetup,
    system: str,
    guarantee: str,
    records: Sequence[kio.BenchRecord],
    expected: Mapping[bytes, np.ndarray],
    round_index: int,
    warmup: float = 0.5,
) -> dict[str, Any]:
    """One drain of ``records`` by ``system`` (streamserve or a peer) under ``guarantee``;
    ``steady`` figures cover what follows the first ``warmup`` share of the records."""
    short = "eos" if guarantee == "exactly-once" else "alos"
    name = f"{workload.model}-peers-{system}-{short}-r{round_index}"
    topics = ctx.topics(name)
    kio.produce_all(ctx.bootstrap, topics[0], records)
    processor: ChildProcess
    if system == STREAMSERVE:
        spec = worker_spec(
            ctx, workload, MODES["embedded"], None, topics, name, guarantee=guarantee
        )
        worker = start_worker(ctx, spec, name)
        processor, calls = worker, lambda: worker_calls(worker)
    else:
        model = (workload.base_path / "1" / "model.onnx").resolve()  # the peer runs elsewhere
        bootstrap = str(client_settings(ctx.bootstrap)["bootstrap.servers"])  # peers: plaintext
        command = setup.command(system, topics, bootstrap, model, guarantee)
        peer = StreamPeerProcess(command, ctx.logs_dir / f"{name}.log", f"{system} peer")
        peer.start()
        try:
            peer.wait_ready(180.0)
        except BaseException:
            peer.stop()
            raise
        processor, calls = peer, peer.calls
    warm_after = int(len(records) * warmup) or None
    drain, outputs = measure_drain(
        ctx, records, topics, name, processor, calls, keep_values=True, warm_after=warm_after
    )
    values = check_values([(o.key, o.value) for o in outputs], expected)
    return {
        "system": system,
        "label": LABELS[system],
        "guarantee": guarantee,
        "round": round_index,
        "drain": drain,
        "values": values,
    }


def run_peers(
    ctx: BenchContext,
    workload: Workload,
    peers: Sequence[str],
    guarantees: Sequence[str],
    count: int,
    rounds: int,
    warmup: float = 0.5,
) -> list[dict[str, Any]]:
    """Alternating rounds: per round and guarantee, streamserve then each peer."""
    setup = PeerSetup.prepare(peers, cache_dir(), ctx.logs_dir)
    records = workload.records(count, ctx.partitions, "")
    expected = expected_outputs(workload.base_path / "1" / "model.onnx", records)
    results = []
    for round_index in range(rounds):
        for guarantee in guarantees:
            for system in (STREAMSERVE, *peers):
                result = run_system(
                    ctx, workload, setup, system, guarantee, records, expected, round_index, warmup
                )
                results.append(result)
                print(one_line(result), file=sys.stderr, flush=True)
    return results


def one_line(result: Mapping[str, Any]) -> str:
    drain, values = result["drain"], result["values"]
    cpu = drain["cpu_us_per_record"]["processor"]
    checked = "outputs OK" if drain["loss"]["ok"] and values["ok"] else "OUTPUT CHECK FAILED"
    steady = drain.get("steady") or {}
    warm = (
        f"  after warm-up {steady['throughput_rps']:,.0f} records/s"
        if steady.get("throughput_rps")
        else ""
    )
    return (
        f"[peers] {result['guarantee']:<13} {result['system']:<13} "
        f"{drain['throughput_rps']:>10,.0f} records/s ({drain['processed']}/{drain['records']})  "
        f"processor {'-' if cpu is None else f'{cpu:,.0f}'} µs/record{warm}  {checked}"
    )
