"""``python -m benchmarks stream --workload avro --peers quix``: Avro events in, enriched Avro out.

The workload of issue 23: N transaction events (eight fields, one of them a nested
``merchant`` record) in the Confluent wire format, their schema registered in a real
Schema Registry, scored by a small fraud model (5 features → ``score``, an ONNX logistic
regression built here) and written back as the same event with ``fraud_score`` added.

Systems, each draining the same backlog on fresh topics, one instance, in alternating
rounds (the order reverses every other round) under each of ``--peer-guarantees``:

========================  =====================================================================
``streamserve``           ``streamserve stream --input-format avro --output-format enriched``,
                          run as the CLI, embedded model, features declared with ``--feature``
``streamserve-json``      the same CLI, the same model and records as tensor JSON
                          (``{"id", "inputs": {"x": [[5 floats]]}}`` → prediction JSON): the
                          baseline for what Avro decode + encode costs per record
``quix``                  a Quix Streams app with Quix's own ``AvroDeserializer`` /
                          ``AvroSerializer`` and ``SchemaRegistryClientConfig``,
                          ``sdf["fraud_score"] = sdf.apply(model.score)`` (``peers/quix/
                          avro_app.py``, in the Quix peer's virtual environment)
========================  =====================================================================

Each drain is measured as :func:`benchmarks.stream_run.measure_drain` measures the other
peers: records/s from the first model call to the last output's log-append time (the
CLI runs through :mod:`benchmarks.stream_cli_timed`, which prints its first call's time as
the Quix app does), processor CPU from ``/proc``, the group's committed offsets,
read_committed outputs. Every output is checked
(:func:`check_avro_outputs`): exactly one per input, every input field kept unchanged,
``fraud_score`` within 1e-4 of the model's answer (ONNX Runtime in the benchmark). The load
average and CPU steal are sampled before every run (:mod:`benchmarks.stream_conditions`).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import struct
import subprocess
import sys
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import BENCHMARKS_DIR, stream_conditions
from benchmarks import stream_io as kio
from benchmarks.stream_cli_timed import CALLS_LINE, FIRST_CALL_LINE, ROWS_LINE
from benchmarks.stream_peers import (
    COMMIT_INTERVAL_MS,
    QUIX_DIR,
    StreamPeerProcess,
    cache_dir,
    quix_python,
)
from benchmarks.stream_stats import VALUE_TOLERANCE, check_values, summarize
from streamserve.processes import STREAM_READY_PREFIX, ChildProcess

STREAMSERVE = "streamserve"
STREAMSERVE_JSON = "streamserve-json"
QUIX = "quix"
SYSTEMS = (STREAMSERVE, STREAMSERVE_JSON, QUIX)
LABELS = {
    STREAMSERVE: "streamserve (embedded), Avro → enriched Avro",
    STREAMSERVE_JSON: "streamserve (embedded), tensor JSON → prediction JSON",
    QUIX: "Quix Streams 3.28, Avro serdes + Schema Registry, sdf.apply + ONNX Runtime",
}
PEERS = (QUIX,)  # the peers that have an Avro app

MODEL_NAME = "fraud"
MODEL_INPUT = "x"
MODEL_OUTPUT = "score"
SCORE_FIELD = "fraud_score"
FEATURES = ("amount", "hour_of_day", "customer_age", "distance_km", "merchant.risk")
# A logistic regression over the five features (weights chosen, not trained: the benchmark
# needs the same model everywhere and scores spread over (0, 1), not a good detector).
WEIGHTS = (0.01, 0.05, -0.03, 0.02, 3.0)
BIAS = -1.5

MERCHANT_SCHEMA: dict[str, Any] = {
    "type": "record",
    "name": "Merchant",
    "fields": [
        {"name": "id", "type": "string"},
        {"name": "category", "type": "string"},
        {"name": "country", "type": "string"},
        {"name": "risk", "type": "double"},
    ],
}
TRANSACTION_SCHEMA: dict[str, Any] = {
    "type": "record",
    "name": "Transaction",
    "namespace": "bench.payments",
    "fields": [
        {"name": "txn_id", "type": "string"},
        {"name": "amount", "type": "double"},
        {"name": "event_time_ms", "type": "long"},
        {"name": "hour_of_day", "type": "int"},
        {"name": "customer_age", "type": "int"},
        {"name": "distance_km", "type": "double"},
        {"name": "card_present", "type": "boolean"},
        {"name": "merchant", "type": MERCHANT_SCHEMA},
    ],
}
CATEGORIES = ("grocery", "fuel", "travel", "electronics", "restaurants", "online")
COUNTRIES = ("DE", "FR", "US", "GB", "NL", "ES")
MAGIC = 0
READY_TIMEOUT_S = 180.0


# --------------------------------------------------------------------------- the workload


def output_schema(schema: Mapping[str, Any] = TRANSACTION_SCHEMA) -> dict[str, Any]:
    """The enriched schema a Quix user writes by hand: the input's fields + ``fraud_score``."""
    fields = [*schema["fields"], {"name": SCORE_FIELD, "type": "double"}]
    return {**schema, "fields": fields}


def build_fraud_model(version_dir: Path) -> Path:
    """``x`` float32 [N, 5] → sigmoid(x · w + b) → ``score`` float32 [N] (ONNX)."""
    from onnx import TensorProto, checker, helper, numpy_helper

    weight = np.asarray(WEIGHTS, np.float32).reshape(len(FEATURES), 1)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", [MODEL_INPUT, "w"], ["logit2d"]),
            helper.make_node("Add", ["logit2d", "b"], ["biased"]),
            helper.make_node("Sigmoid", ["biased"], ["score2d"]),
            helper.make_node("Squeeze", ["score2d", "axes"], [MODEL_OUTPUT]),
        ],
        MODEL_NAME,
        [helper.make_tensor_value_info(MODEL_INPUT, TensorProto.FLOAT, ["N", len(FEATURES)])],
        [helper.make_tensor_value_info(MODEL_OUTPUT, TensorProto.FLOAT, ["N"])],
        initializer=[
            numpy_helper.from_array(weight, "w"),
            numpy_helper.from_array(np.asarray([BIAS], np.float32), "b"),
            numpy_helper.from_array(np.asarray([1], np.int64), "axes"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    checker.check_model(model)
    version_dir.mkdir(parents=True, exist_ok=True)
    path = version_dir / "model.onnx"
    path.write_bytes(model.SerializeToString())
    return path


def fraud_model(models_dir: Path) -> Path:
    """The model's base path (``<models_dir>/fraud``, version 1), built if missing."""
    base = models_dir / MODEL_NAME
    if not (base / "1" / "model.onnx").exists():
        build_fraud_model(base / "1")
    return base


def transactions(count: int, seed: int = 0) -> list[dict[str, Any]]:
    """``count`` deterministic transaction events (dicts as the Avro schema has them)."""
    rng = np.random.default_rng(seed)
    amount = np.round(rng.lognormal(3.5, 1.0, count), 2)
    hour = rng.integers(0, 24, count)
    age = rng.integers(18, 90, count)
    distance = np.round(rng.exponential(25.0, count), 3)
    present = rng.random(count) < 0.7
    risk = np.round(rng.random(count), 4)
    merchant = rng.integers(0, 5000, count)
    return [
        {
            "txn_id": f"txn-{seed}-{i:08d}",
            "amount": float(amount[i]),
            "event_time_ms": 1_700_000_000_000 + 37 * i,
            "hour_of_day": int(hour[i]),
            "customer_age": int(age[i]),
            "distance_km": float(distance[i]),
            "card_present": bool(present[i]),
            "merchant": {
                "id": f"m{int(merchant[i]):05d}",
                "category": CATEGORIES[int(merchant[i]) % len(CATEGORIES)],
                "country": COUNTRIES[int(merchant[i]) // 7 % len(COUNTRIES)],
                "risk": float(risk[i]),
            },
        }
        for i in range(count)
    ]


def field_value(record: Mapping[str, Any], path: str) -> Any:
    """A dotted path's value (``merchant.risk``)."""
    value: Any = record
    for part in path.split("."):
        value = value[part]
    return value


def feature_rows(events: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """The model input for ``events``: float32 [N, 5] in :data:`FEATURES` order."""
    return np.asarray(
        [[field_value(e, name) for name in FEATURES] for e in events], np.float32
    ).reshape(len(events), len(FEATURES))


def expected_scores(model_path: Path, events: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """The model's score per event (ONNX Runtime here, one batch)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    (scores,) = session.run([MODEL_OUTPUT], {MODEL_INPUT: feature_rows(events)})
    return np.asarray(scores, np.float64).reshape(-1)


def avro_bodies(events: Sequence[Mapping[str, Any]], schema: Mapping[str, Any]) -> list[bytes]:
    """Each event as schemaless Avro binary (what follows the wire format's 5-byte header)."""
    from fastavro import parse_schema, schemaless_writer

    parsed = parse_schema(dict(schema))
    bodies = []
    for event in events:
        buffer = io.BytesIO()
        schemaless_writer(buffer, parsed, dict(event))
        bodies.append(buffer.getvalue())
    return bodies


def wire_header(schema_id: int) -> bytes:
    """Confluent's framing: magic byte 0, then the schema id as a big-endian int32."""
    return struct.pack(">bI", MAGIC, schema_id)


def key_of(prefix: str, index: int) -> bytes:
    return f"{prefix}{index}".encode()


def avro_records(
    bodies: Sequence[bytes], schema_id: int, partitions: int, prefix: str = ""
) -> list[kio.BenchRecord]:
    """Framed records keyed ``<prefix><i>``, round-robin over the partitions."""
    header = wire_header(schema_id)
    return [
        kio.BenchRecord(i % partitions, key_of(prefix, i), header + body)
        for i, body in enumerate(bodies)
    ]


def tensor_records(
    events: Sequence[Mapping[str, Any]], partitions: int, prefix: str = ""
) -> list[kio.BenchRecord]:
    """The same events as tensor JSON, ``{"id": i, "inputs": {"x": [[5 floats]]}}``."""
    import orjson

    rows = feature_rows(events)
    option = orjson.OPT_SERIALIZE_NUMPY
    return [
        kio.BenchRecord(
            i % partitions,
            key_of(prefix, i),
            orjson.dumps({"id": i, "inputs": {MODEL_INPUT: rows[i : i + 1]}}, option=option),
        )
        for i in range(len(events))
    ]


# --------------------------------------------------------------------------- checking

Decoded = tuple[int, dict[str, Any]]


class WireDecoder:
    """Confluent-framed Avro → ``(schema id, record)``, writer schemas fetched by id from
    the registry (``schema_text(id)``) and parsed once per id."""

    def __init__(self, schema_text: Callable[[int], str]) -> None:
        self._schema_text = schema_text
        self._parsed: dict[int, Any] = {}

    @classmethod
    def for_registry(cls, url: str) -> WireDecoder:
        from confluent_kafka.schema_registry import SchemaRegistryClient

        client = SchemaRegistryClient({"url": url})
        return cls(lambda schema_id: str(client.get_schema(schema_id).schema_str))

    def __call__(self, value: bytes) -> Decoded:
        from fastavro import parse_schema, schemaless_reader

        if len(value) < 5 or value[0] != MAGIC:
            raise ValueError("not in the Confluent wire format")
        (schema_id,) = struct.unpack(">I", value[1:5])
        parsed = self._parsed.get(schema_id)
        if parsed is None:
            parsed = parse_schema(json.loads(self._schema_text(schema_id)))
            self._parsed[schema_id] = parsed
        record = schemaless_reader(io.BytesIO(value[5:]), parsed, None)
        if not isinstance(record, dict):
            raise ValueError("not a record")
        return schema_id, record


def check_avro_outputs(
    outputs: Sequence[tuple[Hashable, bytes | None]],
    inputs: Mapping[Hashable, Mapping[str, Any]],
    expected: Mapping[Hashable, float],
    decode: Callable[[bytes], Decoded],
    tolerance: float = VALUE_TOLERANCE,
    examples: int = 5,
) -> dict[str, Any]:
    """Each output whose key is an input's: decodable, every input field equal to the
    input's (nested records included), ``fraud_score`` within ``tolerance`` of the model's.

    Fields beyond the input's and the score are reported (``extra_fields``), not failed;
    the outputs' schema ids are listed. Counting outputs against inputs is
    :func:`benchmarks.stream_stats.check_no_loss`'s job; ``ok`` needs at least one checked
    output and none wrong."""
    checked = wrong = 0
    worst = 0.0
    bad: list[str] = []
    schema_ids: set[int] = set()
    extra: set[str] = set()
    for key, value in outputs:
        want = expected.get(key)
        if want is None:
            continue
        checked += 1
        reason = None
        try:
            schema_id, record = decode(value or b"")
        except Exception as exc:  # any decode failure makes the output wrong
            reason = f"undecodable ({type(exc).__name__}: {exc})"
        else:
            schema_ids.add(schema_id)
            reason = _record_problem(record, inputs[key], want, tolerance)
            score = record.get(SCORE_FIELD)
            if isinstance(score, float):
                worst = max(worst, abs(score - want))
            extra.update(set(record) - set(inputs[key]) - {SCORE_FIELD})
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
        "schema_ids": sorted(schema_ids),
        "extra_fields": sorted(extra),
    }


def _record_problem(
    record: Mapping[str, Any], source: Mapping[str, Any], want: float, tolerance: float
) -> str | None:
    missing = [name for name in source if name not in record]
    if missing:
        return f"input field(s) missing: {', '.join(missing)}"
    changed = [name for name, value in source.items() if record[name] != value]
    if changed:
        return f"input field(s) changed: {', '.join(changed)}"
    score = record.get(SCORE_FIELD)
    if not isinstance(score, float):
        return f"{SCORE_FIELD} missing or not a double ({score!r})"
    if not abs(score - want) <= tolerance:
        return f"{SCORE_FIELD} differs by {abs(score - want):.3g}"
    return None


# --------------------------------------------------------------------------- processes


def cli_has_avro() -> bool:
    """Whether this checkout's ``streamserve stream`` takes ``--input-format avro``."""
    from streamserve.processes import streamserve_command

    finished = subprocess.run(
        streamserve_command("stream", "--help"),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return "--input-format" in finished.stdout and "avro" in finished.stdout


def streamserve_args(
    system: str,
    topics: tuple[str, str, str],
    bootstrap: str,
    base_path: Path,
    guarantee: str,
    registry_url: str,
    kafka_config: str | None = None,
    role_flags: Mapping[str, Sequence[str]] | None = None,
) -> list[str]:
    """``streamserve stream`` flags for ``system`` (the Avro or the tensor-JSON path)."""
    in_topic, out_topic, group = topics
    args = [
        f"--bootstrap-servers={bootstrap}",
        f"--input-topic={in_topic}",
        f"--output-topic={out_topic}",
        f"--group-id={group}",
        f"--instance-id={group}",
        f"--guarantee={guarantee}",
        f"--commit-interval-ms={COMMIT_INTERVAL_MS}",
        f"--model-base-path={base_path}",
        f"--model-name={MODEL_NAME}",
        "--metrics-port=0",
    ]
    if kafka_config:
        args.append(f"--kafka-config={kafka_config}")
    for role, flags in (role_flags or {}).items():
        args += [f"--{role}-config={flag}" for flag in flags]
    if system == STREAMSERVE:
        return [
            *args,
            "--input-format=avro",
            "--output-format=enriched",
            f"--feature={MODEL_INPUT}={','.join(FEATURES)}",
            f"--output-field={SCORE_FIELD}={MODEL_OUTPUT}:double",
            f"--schema-registry-url={registry_url}",
        ]
    if system == STREAMSERVE_JSON:
        return [*args, "--input-format=tensor", "--output-format=prediction"]
    raise ValueError(f"not a streamserve system: {system!r}")


def quix_avro_command(
    python: Path,
    topics: tuple[str, str, str],
    bootstrap: str,
    registry_url: str,
    model: Path,
    guarantee: str,
    schema_path: Path,
) -> list[str]:
    in_topic, out_topic, group = topics
    return [
        str(python),
        str(QUIX_DIR / "avro_app.py"),
        bootstrap,
        registry_url,
        in_topic,
        out_topic,
        group,
        str(model.resolve()),  # the peer runs in the log folder
        guarantee,
        str(COMMIT_INTERVAL_MS),
        str(schema_path.resolve()),
    ]


class CliStream(ChildProcess):
    """``streamserve stream ARGS`` through :mod:`benchmarks.stream_cli_timed` (the CLI with
    its model calls counted and the first one timed, read back from the log)."""

    ready_prefix = STREAM_READY_PREFIX

    def __init__(self, args: Sequence[str], log_path: Path) -> None:
        pythonpath = os.pathsep.join(
            filter(None, [str(BENCHMARKS_DIR.parent), os.environ.get("PYTHONPATH", "")])
        )
        super().__init__(
            [sys.executable, "-m", "benchmarks.stream_cli_timed", *args],
            log_path,
            env={"PYTHONPATH": pythonpath},  # the checkout holding benchmarks (not installed)
            name="streamserve stream",
        )

    def calls(self) -> tuple[dict[str, Any], float | None]:
        return cli_calls(self.log_text())


def cli_calls(log_text: str) -> tuple[dict[str, Any], float | None]:
    """Model calls, rows per call and the first call's wall-clock ms from the CLI's log."""
    first = re.findall(rf"^{FIRST_CALL_LINE} (\d+)", log_text, re.MULTILINE)
    calls = re.findall(rf"^{CALLS_LINE} (\d+)", log_text, re.MULTILINE)
    rows = re.findall(rf"^{ROWS_LINE} (\d+)", log_text, re.MULTILINE)
    count = int(calls[-1]) if calls else 0
    summary = {
        "latency_ms": summarize([]),
        "calls": count or None,
        "rows_per_call": round(int(rows[-1]) / count, 2) if count and rows else None,
        "failed_calls": None,
    }
    return summary, float(first[-1]) if first else None


# --------------------------------------------------------------------------- runs


@dataclass
class AvroWorkload:
    """What every run of the Avro comparison shares, prepared once."""

    base_path: Path
    registry_url: str
    schema_dir: Path
    events: list[dict[str, Any]]
    partitions: int
    bodies: list[bytes] = field(default_factory=list)
    json_records: list[kio.BenchRecord] = field(default_factory=list)
    scores: np.ndarray = field(default_factory=lambda: np.zeros(0))
    quix_python: Path | None = None

    @property
    def model_path(self) -> Path:
        return (self.base_path / "1" / "model.onnx").resolve()

    @property
    def output_schema_path(self) -> Path:
        return self.schema_dir / "transaction_enriched.avsc"

    def prepare(self) -> AvroWorkload:
        self.schema_dir.mkdir(parents=True, exist_ok=True)
        (self.schema_dir / "transaction.avsc").write_text(json.dumps(TRANSACTION_SCHEMA, indent=2))
        self.output_schema_path.write_text(json.dumps(output_schema(), indent=2))
        self.bodies = avro_bodies(self.events, TRANSACTION_SCHEMA)
        self.json_records = tensor_records(self.events, self.partitions)
        self.scores = expected_scores(self.model_path, self.events)
        return self

    def expected(self) -> dict[Hashable, float]:
        return {key_of("", i): float(s) for i, s in enumerate(self.scores)}

    def expected_rows(self) -> dict[Hashable, np.ndarray]:
        return {key_of("", i): np.asarray([s]) for i, s in enumerate(self.scores)}

    def inputs(self) -> dict[Hashable, Mapping[str, Any]]:
        return {key_of("", i): event for i, event in enumerate(self.events)}


def register_input_schema(registry_url: str, topic: str) -> int:
    """Register the transaction schema under ``<topic>-value`` (TopicNameStrategy, as a
    producer's AvroSerializer would) and return its id."""
    from confluent_kafka.schema_registry import Schema, SchemaRegistryClient

    client = SchemaRegistryClient({"url": registry_url})
    return int(
        client.register_schema(f"{topic}-value", Schema(json.dumps(TRANSACTION_SCHEMA), "AVRO"))
    )


def subject_versions(registry_url: str, subject: str) -> list[int]:
    """The versions registered under ``subject`` (none: ``[]``)."""
    from confluent_kafka.schema_registry import SchemaRegistryClient
    from confluent_kafka.schema_registry.error import SchemaRegistryError

    client = SchemaRegistryClient({"url": registry_url})
    try:
        return [int(v) for v in client.get_versions(subject)]
    except SchemaRegistryError:
        return []


def start_processor(
    ctx: Any, work: AvroWorkload, system: str, guarantee: str, topics: tuple[str, str, str],
    name: str,
) -> tuple[ChildProcess, Callable[[], tuple[dict[str, Any], float | None]]]:  # fmt: skip
    from streamserve.kafka.admin import client_settings

    bootstrap = str(client_settings(ctx.bootstrap)["bootstrap.servers"])
    log_path = ctx.logs_dir / f"{name}.log"
    log_path.unlink(missing_ok=True)  # an earlier run's lines (same --out) would be read back
    process: ChildProcess
    if system == QUIX:
        assert work.quix_python is not None
        command = quix_avro_command(
            work.quix_python, topics, bootstrap, work.registry_url, work.model_path,
            guarantee, work.output_schema_path,
        )  # fmt: skip
        peer = StreamPeerProcess(command, log_path, "quix avro peer")
        process, calls = peer, peer.calls
    else:
        args = streamserve_args(
            system, topics, bootstrap, work.base_path.resolve(), guarantee, work.registry_url,
            ctx.kafka_config, ctx.kafka_role_flags,
        )  # fmt: skip
        cli = CliStream(args, log_path)
        process, calls = cli, cli.calls
    process.start()
    try:
        process.wait_ready(READY_TIMEOUT_S)
    except BaseException:
        process.stop()
        raise
    return process, calls


def run_system(
    ctx: Any,
    work: AvroWorkload,
    system: str,
    guarantee: str,
    round_index: int,
    warmup: float = 0.5,
) -> dict[str, Any]:
    """One drain of the workload's records by ``system`` under ``guarantee``."""
    from benchmarks.stream_run import measure_drain

    short = "eos" if guarantee == "exactly-once" else "alos"
    name = f"avro-{system}-{short}-r{round_index}"
    conditions = stream_conditions.sample()
    warned = stream_conditions.warning(conditions, name)
    if warned:
        print(warned, file=sys.stderr, flush=True)
    topics = ctx.topics(name)
    schema_id = None
    if system == STREAMSERVE_JSON:
        records = work.json_records
    else:
        schema_id = register_input_schema(work.registry_url, topics[0])
        records = avro_records(work.bodies, schema_id, work.partitions)
    kio.produce_all(ctx.bootstrap, topics[0], records)
    processor, calls = start_processor(ctx, work, system, guarantee, topics, name)
    warm_after = int(len(records) * warmup) or None
    drain, outputs = measure_drain(
        ctx, records, topics, name, processor, calls, keep_values=True, warm_after=warm_after
    )
    pairs = [(o.key, o.value) for o in outputs]
    if system == STREAMSERVE_JSON:
        values = check_values(pairs, work.expected_rows(), output_name=MODEL_OUTPUT)
    else:
        decoder = WireDecoder.for_registry(work.registry_url)
        values = check_avro_outputs(pairs, work.inputs(), work.expected(), decoder)
        values["input_schema_id"] = schema_id
        values["output_subject_versions"] = subject_versions(
            work.registry_url, f"{topics[1]}-value"
        )
    return {
        "system": system,
        "label": LABELS[system],
        "guarantee": guarantee,
        "round": round_index,
        "conditions": conditions,
        "drain": drain,
        "values": values,
    }


def round_order(systems: Sequence[str], round_index: int) -> list[str]:
    """The systems in order on even rounds, reversed on odd ones (drift cancels out)."""
    return list(systems) if round_index % 2 == 0 else list(reversed(systems))


def run_avro(
    ctx: Any,
    models_dir: Path,
    registry_url: str,
    peers: Sequence[str],
    guarantees: Sequence[str],
    count: int,
    rounds: int,
    warmup: float = 0.5,
) -> list[dict[str, Any]]:
    """Alternating rounds: per round and guarantee, streamserve Avro, streamserve tensor
    JSON and each peer, each on fresh topics."""
    logging.getLogger("httpx2").setLevel(logging.WARNING)  # the registry clients' requests
    unknown = [p for p in peers if p not in PEERS]
    if unknown:
        raise ValueError(f"no Avro app for peer(s) {', '.join(unknown)}: choose from quix")
    if not cli_has_avro():
        raise ValueError("this checkout's streamserve stream has no --input-format avro yet")
    work = AvroWorkload(
        base_path=fraud_model(models_dir),
        registry_url=registry_url,
        schema_dir=ctx.logs_dir / "schemas",
        events=transactions(count),
        partitions=ctx.partitions,
    ).prepare()
    if QUIX in peers:
        work.quix_python = quix_python(cache_dir(), ctx.logs_dir / "peer-setup.quix.log")
    systems = [STREAMSERVE, STREAMSERVE_JSON, *peers]
    results = []
    for round_index in range(rounds):
        for guarantee in guarantees:
            for system in round_order(systems, round_index):
                result = run_system(ctx, work, system, guarantee, round_index, warmup)
                results.append(result)
                print(one_line(result), file=sys.stderr, flush=True)
    return results


def one_line(result: Mapping[str, Any]) -> str:
    drain, values = result["drain"], result["values"]
    cpu = drain["cpu_us_per_record"]["processor"]
    checked = "outputs OK" if drain["loss"]["ok"] and values["ok"] else "OUTPUT CHECK FAILED"
    return (
        f"[avro] {result['guarantee']:<13} {result['system']:<17} "
        f"{drain['throughput_rps']:>10,.0f} records/s ({drain['processed']}/{drain['records']})  "
        f"processor {'-' if cpu is None else f'{cpu:,.0f}'} µs/record  {checked}  "
        f"[{stream_conditions.describe(result['conditions'])} before]"
    )


@contextlib.contextmanager
def schema_registry(url: str | None) -> Iterator[str]:
    """``url`` when given, else a registry started by the project
    (``streamserve.testing.schema_registry()``) for the length of the block."""
    if url:
        yield url.rstrip("/")
        return
    try:
        from streamserve.testing import schema_registry as project_registry
    except ImportError:
        raise ValueError(
            "--workload avro needs a Schema Registry: pass --schema-registry-url URL "
            "(this checkout cannot start one yet)"
        ) from None
    with project_registry() as started:
        yield str(started).rstrip("/")
