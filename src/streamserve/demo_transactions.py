"""``streamserve demo transactions``: card payments as Avro events → a scikit-learn fraud
model → the same events, enriched with a score.

1. Builds the model unless it is there (``streamserve models build transactions``, cached):
   a gradient-boosting classifier trained on synthetic transactions whose fraud rule is
   documented in :mod:`streamserve.models.transactions` (why synthetic is said there).
2. Starts the project's Kafka broker (or uses the given cluster), a real Schema Registry
   (:func:`streamserve.testing.schema_registry`, or ``--schema-registry-url``) and, for
   remote mode, ``streamserve serve`` with the model.
3. Per mode, runs ``streamserve stream --input-format avro --output-format enriched`` as
   the CLI (remote over gRPC, then embedded, with ``--mode both``); produces transactions
   with confluent-kafka's ``AvroSerializer`` (schema registered under
   ``transactions-value``) and reads the outputs with ``AvroDeserializer`` (the schema the
   processor registered under ``transactions-scored-value``); checks every output: each
   input field kept, ``fraud_score`` in [0, 1].
4. Prints a few input → enriched output pairs, then each mode's paced end-to-end latency
   and burst throughput, as ``streamserve demo`` does (its helpers run both demos).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from streamserve import demo
from streamserve.exit_codes import ExitCode
from streamserve.kafka.client_config import KafkaClientConfig

if TYPE_CHECKING:  # numpy: imported on use, for a fast --help
    from streamserve.models.transactions import Transactions

HELP = "Card transactions as Avro events → a scikit-learn fraud model → enriched Avro events"
INPUT_TOPIC = "transactions"
OUTPUT_TOPIC = "transactions-scored"
MODEL_NAME = "fraud"
SCORE_FIELD = "fraud_score"
OUTPUT_FIELDS = {
    SCORE_FIELD: "probabilities[1]",  # predict_proba's positive class
    "model_version": "$model_version",
    "latency_ms": "$latency_ms",  # inside the processor: consumed → encoded
}
SEED = 2024  # the demo's transactions: neither the training nor the test set
MODES = ("remote", "embedded")  # the order of `streamserve demo`


def add_parser(subparsers: Any) -> None:
    """``transactions`` among ``streamserve demo``'s subcommands."""
    parser = subparsers.add_parser("transactions", help=HELP, description=HELP)
    configure(parser)
    parser.set_defaults(_run=run)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model-base-path",
        type=Path,
        default=Path("models/transactions"),
        help="the model's base path; built there when missing (streamserve models build "
        "transactions)",
    )
    parser.add_argument(
        "--records", type=int, default=5000, help="records of the burst round (throughput)"
    )
    parser.add_argument(
        "--paced", type=int, default=50, help="records of the paced round, at --rate (latency)"
    )
    parser.add_argument(
        "--show", type=int, default=4, help="input → output pairs printed per mode and kind"
    )
    parser.add_argument(
        "--schema-registry-url",
        help="use this Confluent-compatible Schema Registry (default: start Apicurio Registry)",
    )
    demo.add_run_options(parser)
    parser.set_defaults(rate=10.0)


@dataclass(frozen=True)
class Scored(demo.Received):
    """One enriched output, decoded."""

    record: dict[str, Any]


class _TransactionWriter(demo._InputWriter):
    """Produces transaction rows as Avro (``AvroSerializer``; the schema auto-registered
    under ``transactions-value``). A source is the row's index in ``transactions``."""

    topic = INPUT_TOPIC

    def __init__(
        self, kafka: KafkaClientConfig, mode: str, transactions: Transactions, registry: Any
    ) -> None:
        from confluent_kafka.schema_registry.avro import AvroSerializer
        from confluent_kafka.serialization import MessageField, SerializationContext

        from streamserve.models.transactions import TRANSACTION_SCHEMA

        super().__init__(kafka, mode)
        self.transactions = transactions
        self.inputs: dict[str, dict[str, Any]] = {}
        self.rows: dict[str, int] = {}
        self._serialize = AvroSerializer(registry, json.dumps(TRANSACTION_SCHEMA))
        self._context = SerializationContext(INPUT_TOPIC, MessageField.VALUE)

    def record_ids(self, tag: str, count: int) -> list[str]:
        return [f"t-{tag}-{index:04d}" for index in range(count)]

    def _message(self, record_id: str, source: str) -> bytes:
        row = int(source)
        record = self.transactions.record(row, record_id, time.time_ns() // 1_000_000)
        self.inputs[record_id] = record
        self.rows[record_id] = row
        value = self._serialize(record, self._context)
        assert value is not None
        return bytes(value)


class _ScoredReader(demo._OutputReader):
    """Reads ``transactions-scored`` with ``AvroDeserializer`` (schemas by id, from the
    registry)."""

    def __init__(self, kafka: KafkaClientConfig, partitions: int, registry: Any, mode: str) -> None:
        from confluent_kafka.schema_registry.avro import AvroDeserializer
        from confluent_kafka.serialization import MessageField, SerializationContext

        super().__init__(kafka, partitions, OUTPUT_TOPIC)
        self.mode = mode
        self.schema_ids: set[int] = set()
        self._deserialize = AvroDeserializer(registry)
        self._context = SerializationContext(OUTPUT_TOPIC, MessageField.VALUE)

    def _parse(self, message: Any, sent_records: dict[str, demo.Sent]) -> Scored | None:
        if message.error() is not None:
            return None
        value = message.value()
        record = self._deserialize(value, self._context)
        sent = sent_records.get(str(record.get("txn_id")))
        if sent is None:
            return None
        self.schema_ids.add(int.from_bytes(value[1:5], "big"))
        now = time.time()
        score = record.get(SCORE_FIELD)
        labels = [(SCORE_FIELD, float(score))] if isinstance(score, float) else []
        processor_ms = record.get("latency_ms")
        return Scored(
            sent.id,
            sent.source,
            labels,
            self.mode,
            (now - sent.produced_at) * 1000.0,
            float(processor_ms) if isinstance(processor_ms, float) else math.nan,
            now,
            record,
        )


def problems(inputs: Mapping[str, Mapping[str, Any]], outputs: Sequence[Scored]) -> list[str]:
    """What is wrong with ``outputs`` as enriched events of ``inputs`` (empty: nothing)."""
    found = []
    for output in outputs:
        sent = inputs.get(output.id)
        if sent is None:
            found.append(f"{output.id}: an output for no input")
            continue
        changed = [name for name, value in sent.items() if output.record.get(name) != value]
        if changed:
            found.append(f"{output.id}: input fields changed or missing: {', '.join(changed)}")
        score = output.record.get(SCORE_FIELD)
        if not isinstance(score, float) or not 0.0 <= score <= 1.0:
            found.append(f"{output.id}: {SCORE_FIELD}={score!r} is not a probability")
        if not isinstance(output.record.get("model_version"), int):
            found.append(f"{output.id}: no model_version")
    return found


def agreement(first: Mapping[str, float], then: Mapping[str, float]) -> tuple[int, int]:
    """How many of the records both runs scored got the same score (to 1e-9), of how many."""
    common = first.keys() & then.keys()
    return sum(abs(first[key] - then[key]) <= 1e-9 for key in common), len(common)


def describe(record: Mapping[str, Any]) -> str:
    """A transaction's main fields on one line."""
    merchant, customer = record["merchant"], record["customer"]
    return (
        f"txn {record['txn_id']} amount={record['amount']:.2f} "
        f"merchant={merchant['category']} (risk {merchant['risk']:.2f}) hour={record['hour']} "
        f"age={customer['age']} distance_km={record['distance_km']:.1f}"
    )


def pair_line(scored: Scored, fraud: bool) -> str:
    """``txn ... → fraud_score=0.93 (model v1)``, and whether the generator drew fraud."""
    record = scored.record
    drawn = "  [drawn: fraud]" if fraud else ""
    return (
        f"{describe(record)} → {SCORE_FIELD}={record[SCORE_FIELD]:.2f} "
        f"(model v{record['model_version']}){drawn}"
    )


def _print_pairs(
    paced: Sequence[Scored], everything: Sequence[Scored], writer: _TransactionWriter, show: int
) -> None:
    """The paced round's first ``show`` pairs, and the ``show`` highest scores of all."""
    fraud = writer.transactions.fraud
    if not paced or show <= 0:
        return
    print("\ninput → enriched output, the first records:")
    for result in paced[:show]:
        print(pair_line(result, bool(fraud[writer.rows[result.id]])))
    print(f"the highest scores of all {len(everything):,} ([drawn: fraud]: the generator's label):")
    highest = sorted(everything, key=lambda r: -float(r.record[SCORE_FIELD]))[:show]
    for result in highest:
        print(pair_line(result, bool(fraud[writer.rows[result.id]])))


def processor_args(
    kafka_flags: Sequence[str],
    mode: str,
    model_args: Sequence[str],
    registry_url: str,
    args: argparse.Namespace,
) -> list[str]:
    """``streamserve stream``'s arguments for ``mode``: Avro in, enriched Avro out."""
    return [
        f"--input-topic={INPUT_TOPIC}",
        f"--output-topic={OUTPUT_TOPIC}",
        f"--group-id=streamserve-demo-transactions-{mode}",
        f"--instance-id=demo-transactions-{mode}",
        *event_args(registry_url),
        f"--model-name={MODEL_NAME}",
        f"--guarantee={args.guarantee}",
        f"--commit-interval-ms={args.commit_interval_ms:g}",
        *demo.LOW_LATENCY_ARGS,
        # each mode's group starts at the end: it sees only the records produced for it
        "--consumer-config=auto.offset.reset=latest",
        *model_args,
        *kafka_flags,  # the user's client settings last: theirs win
    ]


def event_args(registry_url: str) -> list[str]:
    """The flags that make ``streamserve stream`` read and write these events."""
    from streamserve.models.transactions import FEATURES

    return [
        "--input-format=avro",
        f"--schema-registry-url={registry_url}",
        f"--feature=inputs={','.join(FEATURES)}",
        "--signature-name=predict_proba",
        "--output-format=enriched",
        *(f"--output-field={name}={source}" for name, source in OUTPUT_FIELDS.items()),
    ]


def _command_lines(flags: Sequence[str]) -> str:
    """``stream    streamserve stream ... FLAGS``, shell-quoted, wrapped with ``\\``."""
    import shlex

    words = [shlex.quote(flag) for flag in flags]
    lines, line = [], "stream    streamserve stream ..."
    for word in words:
        if len(line) + len(word) > 95:
            lines.append(line + " \\")
            line = "           "
        line += " " + word
    return "\n".join([*lines, line])


def _ensure_model(base_path: Path) -> Path:
    """The model's version dir, built (trained) first when missing."""
    import importlib.util

    from streamserve.errors import MissingExtra
    from streamserve.models.cli import build_model
    from streamserve.models.transactions import MODEL_FILE, TRAINING_FILE

    for module in ("sklearn", "joblib"):
        if importlib.util.find_spec(module) is None:
            raise MissingExtra("sklearn", module, "streamserve demo transactions")
    started = time.perf_counter()
    cached = (base_path / "1" / MODEL_FILE).exists()
    version_dir = build_model("transactions", base_path)
    training = json.loads((version_dir / TRAINING_FILE).read_text())
    how = "cached" if cached else f"trained in {time.perf_counter() - started:.1f}s"
    print(
        f"model     {training['model']} on {training['train']['rows']:,} synthetic "
        f"transactions, ROC AUC {training['roc_auc']:.3f} on {training['test']['rows']:,} "
        f"others (the fraud rule's own: {training['rule_roc_auc']:.3f}); {how}, {version_dir}"
    )
    return version_dir


def _start_registry(stack: contextlib.ExitStack, args: argparse.Namespace) -> str:
    if args.schema_registry_url:
        print(f"registry  {args.schema_registry_url}")
        return str(args.schema_registry_url)
    from streamserve.testing import schema_registry

    started = time.perf_counter()
    url = str(stack.enter_context(schema_registry()))
    print(f"registry  {url} ready in {time.perf_counter() - started:.1f}s")
    return url


def _output_schema(registry: Any) -> str:
    """The output subject's latest schema: subject, id, version and its added fields."""
    from streamserve.models.transactions import TRANSACTION_SCHEMA

    latest = registry.get_latest_version(f"{OUTPUT_TOPIC}-value")
    schema = json.loads(latest.schema.schema_str)
    inputs = {field["name"] for field in TRANSACTION_SCHEMA["fields"]}
    added = [
        f"{field['name']}: {json.dumps(field['type'])}"
        for field in schema["fields"]
        if field["name"] not in inputs
    ]
    return (
        f"{OUTPUT_TOPIC}-value v{latest.version} (id {latest.schema_id}): the input's fields + "
        + ", ".join(added)
    )


def _save_events(path: Path, writer: _TransactionWriter, results: Sequence[Scored]) -> None:
    rows = [{"input": writer.inputs[r.id], "output": r.record} for r in results]
    path.write_text(json.dumps(rows, indent=1) + "\n")


def _validate(args: argparse.Namespace) -> None:
    from streamserve.errors import InvalidArgument

    for name in ("rate", "commit_interval_ms"):
        if not getattr(args, name) > 0:
            raise InvalidArgument(f"--{name.replace('_', '-')} must be above 0")
    for name in ("records", "paced"):
        if getattr(args, name) < 1:
            raise InvalidArgument(f"--{name} must be at least 1")


def _report(
    mode: str,
    result: demo.ModeResult,
    writer: _TransactionWriter,
    scores_by_mode: dict[str, dict[str, float]],
    work_dir: Path,
    args: argparse.Namespace,
) -> list[str]:
    """Check, save and print one mode's outputs; what was wrong with them (empty: nothing).
    The first mode prints input → output pairs, later ones how their scores compare."""
    paced = [r for r in result.paced if isinstance(r, Scored)]
    outputs = [*paced, *(r for r in result.burst if isinstance(r, Scored))]
    found = problems(writer.inputs, outputs)
    demo._save_latencies(work_dir / f"latencies-{mode}.json", result.paced)
    _save_events(work_dir / f"events-{mode}.json", writer, outputs)
    verdict = "checked" if not found else f"{len(found)} wrong: {found[0]}"
    print(
        f"\n== {mode} mode, {args.guarantee}: {len(outputs)}/{args.paced + args.records} "
        f"enriched events ({verdict}: every input field kept, {SCORE_FIELD} in [0, 1])"
    )
    scores = {r.id: float(r.record[SCORE_FIELD]) for r in outputs}
    if not scores_by_mode:
        _print_pairs(paced, outputs, writer, args.show)
    for other, earlier in scores_by_mode.items():
        equal, compared = agreement(earlier, scores)
        print(f"the same transactions as in {other} mode: {equal:,}/{compared:,} scores equal")
        if equal != compared:
            found.append(f"{mode}: {compared - equal} scores differ from {other} mode's")
    scores_by_mode[mode] = scores
    return found


def run(args: argparse.Namespace) -> int:
    from confluent_kafka.schema_registry import SchemaRegistryClient

    from streamserve.models.transactions import generate
    from streamserve.processes import StreamProcess

    _validate(args)
    with contextlib.ExitStack() as stack:
        work_dir = args.work_dir or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        work_dir.mkdir(parents=True, exist_ok=True)
        _ensure_model(args.model_base_path)
        kafka = demo._start_kafka(stack, args, (INPUT_TOPIC, OUTPUT_TOPIC))
        registry_url = _start_registry(stack, args)
        registry = SchemaRegistryClient({"url": registry_url})
        modes = [mode for mode in MODES if args.mode in ("both", mode)]
        model_args = {"embedded": [f"--model-base-path={args.model_base_path.resolve()}"]}
        if "remote" in modes:
            server = demo._start_server(stack, MODEL_NAME, args.model_base_path, work_dir)
            model_args["remote"] = [f"--model-server={server.grpc_url}"]
        transactions = generate(max(args.records, args.paced), SEED)
        sources = [str(row) for row in range(len(transactions))]
        kafka_flags, kafka_env = demo._kafka_args(kafka, args)
        print(_command_lines(event_args(registry_url)))
        by_mode: dict[str, demo.ModeResult] = {}
        failures: list[str] = []
        scores_by_mode: dict[str, dict[str, float]] = {}
        for mode in modes:
            reader = _ScoredReader(kafka, args.partitions, registry, mode)
            writer = _TransactionWriter(kafka, mode, transactions, registry)
            processor = StreamProcess(
                processor_args(kafka_flags, mode, model_args[mode], registry_url, args),
                work_dir / f"processor-{mode}.log",
                env=kafka_env,
            )
            counts = (args.paced, args.records)
            result = by_mode[mode] = demo._measure(writer, reader, processor, sources, counts, args)
            failures += _report(mode, result, writer, scores_by_mode, work_dir, args)
        print(f"\noutput schema  {_output_schema(registry)}")
        demo._print_comparison(by_mode, args)
        if args.work_dir:
            print(f"\nlogs and events-<mode>.json in {work_dir}")
        complete = all(
            len(r.paced) == args.paced and len(r.burst) == args.records for r in by_mode.values()
        )
        return ExitCode.OK if complete and not failures else ExitCode.NOT_SUCCEEDED
