"""``streamserve demo transactions``: the generator, the model builder, the processor's
arguments, the checks and lines it prints, and its place in the ``demo`` CLI."""

from __future__ import annotations

import argparse
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest

from streamserve import cli, demo, demo_transactions
from streamserve.kafka.client_config import KafkaClientConfig
from streamserve.models import transactions as tx


def _args(*argv: str) -> argparse.Namespace:
    return cli.build_parser().parse_args(["demo", "transactions", *argv])


def test_the_generator_is_deterministic_and_its_events_fit_the_schema() -> None:
    fastavro = pytest.importorskip("fastavro")
    first, again = tx.generate(500, 1), tx.generate(500, 1)
    assert np.array_equal(first.features(), again.features())
    assert np.array_equal(first.fraud, again.fraud)
    assert not np.array_equal(first.features(), tx.generate(500, 2).features())
    schema = fastavro.parse_schema(tx.TRANSACTION_SCHEMA)
    for row in range(20):
        record = first.record(row, f"t-{row}", 1_700_000_000_000)
        fastavro.schemaless_writer(io.BytesIO(), schema, record)  # raises when it does not fit
        # the model's columns are the record's fields, by their dotted paths
        values = [_field(record, path) for path in tx.FEATURES]
        assert values == pytest.approx(list(first.features()[row]))


def _field(record: dict[str, object], path: str) -> object:
    value: object = record
    for part in path.split("."):
        assert isinstance(value, dict)
        value = value[part]
    return value


def test_the_fraud_rule_is_the_documented_one() -> None:
    # amount 50, hour 12, risk 0, age 40, distance 0: -7 + 1.1·ln 2
    quiet = np.array([[50.0, 12, 0.0, 40, 0.0]])
    assert tx.fraud_logit(quiet)[0] == pytest.approx(-7.0 + 1.1 * math.log(2))
    # night, a young customer, a risky merchant, far away: every term adds
    risky = np.array([[50.0, 3, 1.0, 20, 50.0]])
    expected = -7.0 + 1.1 * math.log(2) + 1.8 + 3.5 + 1.2 * math.log(2) + 0.9
    assert tx.fraud_logit(risky)[0] == pytest.approx(expected)
    rate = tx.generate(20_000, tx.TRAIN_SEED).fraud.mean()
    assert 0.02 < rate < 0.05  # "about 3%"


@pytest.fixture(scope="module")
def model_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("sklearn")
    from streamserve.models.cli import build_model

    base = tmp_path_factory.mktemp("models") / "transactions"
    build_model("transactions", base)
    return base


def test_the_built_model_serves_predict_proba_and_learned_the_rule(model_base: Path) -> None:
    from streamserve.runtimes.scikit_learn import SklearnRuntime

    servable = SklearnRuntime().load(model_base / "1")
    signature = servable.signatures["predict_proba"]
    assert signature.inputs["inputs"].shape == (None, len(tx.FEATURES))
    assert signature.outputs["probabilities"].shape == (None, 2)
    data = tx.generate(2000, 99)
    scores = servable.predict({"inputs": data.features()}, "predict_proba")["probabilities"][:, 1]
    assert ((scores >= 0) & (scores <= 1)).all()
    assert scores[data.fraud].mean() > 3 * scores[~data.fraud].mean()
    training = json.loads((model_base / "1" / tx.TRAINING_FILE).read_text())
    assert training["features"] == list(tx.FEATURES)
    assert 0.85 < training["roc_auc"] <= training["rule_roc_auc"] + 0.01


def test_the_build_is_cached_and_named_in_models_build(model_base: Path) -> None:
    from streamserve.models.cli import build_model

    model = model_base / "1" / tx.MODEL_FILE
    before = model.stat().st_mtime_ns
    build_model("transactions", model_base)
    assert model.stat().st_mtime_ns == before
    args = cli.build_parser().parse_args(["models", "build", "transactions", "--out", "x"])
    assert args.name == "transactions"


def test_demo_without_a_subcommand_is_the_image_demo() -> None:
    args = cli.build_parser().parse_args(["demo", "--rounds=1"])
    assert args._run is demo.run and args.rounds == 1
    assert args.model_base_path == Path("models/imagenet")


def test_demo_transactions_has_its_own_defaults() -> None:
    args = _args("--records=20", "--log-level=debug")
    assert args._run is demo_transactions.run
    assert (args.records, args.paced, args.rate, args.mode) == (20, 50, 10.0, "both")
    assert args.model_base_path == Path("models/transactions")
    assert args.guarantee == "exactly-once" and args.log_level == "DEBUG"


def test_the_processor_reads_avro_and_writes_enriched_avro() -> None:
    args = _args("--guarantee=at-least-once", "--producer-config=linger.ms=20")
    kafka_flags, _ = demo._kafka_args(KafkaClientConfig.for_bootstrap("127.0.0.1:9092"), args)
    flags = demo_transactions.processor_args(
        kafka_flags,
        "embedded",
        ["--model-base-path=/m"],
        "http://127.0.0.1:1/apis/ccompat/v7",
        args,
    )
    for flag in (
        "--input-format=avro",
        "--output-format=enriched",
        "--schema-registry-url=http://127.0.0.1:1/apis/ccompat/v7",
        "--feature=inputs=amount,hour,merchant.risk,customer.age,distance_km",
        "--output-field=fraud_score=probabilities[1]",
        "--output-field=model_version=$model_version",
        "--signature-name=predict_proba",
        "--guarantee=at-least-once",
        "--model-base-path=/m",
        "--input-topic=transactions",
        "--output-topic=transactions-scored",
    ):
        assert flag in flags, flag
    assert flags.index("--producer-config=linger.ms=0") < flags.index(
        "--producer-config=linger.ms=20"
    )  # the user's settings come last: they win


def _scored(record: dict[str, object]) -> demo_transactions.Scored:
    return demo_transactions.Scored("t-1", "0", [], "embedded", 1.0, 0.5, 0.0, record)


def _event() -> dict[str, object]:
    return tx.generate(1, 5).record(0, "t-1", 1)


def test_problems_name_changed_fields_and_bad_scores() -> None:
    event = _event()
    good = {**event, "fraud_score": 0.25, "model_version": 1, "latency_ms": 0.5}
    assert demo_transactions.problems({"t-1": event}, [_scored(good)]) == []
    bad = {**good, "amount": 1.0, "fraud_score": 1.5}
    found = demo_transactions.problems({"t-1": event}, [_scored(bad)])
    assert "input fields changed or missing: amount" in found[0]
    assert "fraud_score=1.5 is not a probability" in found[1]
    unknown = demo_transactions.problems({}, [_scored(good)])
    assert unknown == ["t-1: an output for no input"]


def test_a_pair_line_shows_the_input_and_the_score() -> None:
    event = {
        "txn_id": "t-paced-0003",
        "amount": 912.4,
        "hour": 2,
        "merchant": {"id": "m-1", "category": "electronics", "risk": 0.62},
        "customer": {"id": "c-1", "age": 22},
        "distance_km": 480.0,
    }
    line = demo_transactions.pair_line(
        _scored({**event, "fraud_score": 0.934, "model_version": 1}), fraud=True
    )
    assert line == (
        "txn t-paced-0003 amount=912.40 merchant=electronics (risk 0.62) hour=2 age=22 "
        "distance_km=480.0 → fraud_score=0.93 (model v1)  [drawn: fraud]"
    )


@pytest.mark.parametrize(
    ("flag", "message"),
    [("--records=0", "--records must be at least 1"), ("--rate=0", "--rate must be above 0")],
)
def test_bad_counts_are_usage_errors(
    flag: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["demo", "transactions", flag]) == cli.EXIT_ERROR
    assert message in capsys.readouterr().err


def test_agreement_counts_equal_scores_of_the_records_both_runs_scored() -> None:
    first = {"a": 0.5, "b": 0.25, "c": 0.1}
    assert demo_transactions.agreement(first, {"a": 0.5, "b": 0.25 + 1e-12}) == (2, 2)
    assert demo_transactions.agreement(first, {"a": 0.5, "c": 0.2, "d": 0.3}) == (1, 2)
