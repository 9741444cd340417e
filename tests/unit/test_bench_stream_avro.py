"""``python -m benchmarks stream --workload avro``: the workload (events, schema, framing,
model), the output check, the command lines, the machine's conditions and the report. No
broker, no registry (schemas are looked up in a dict), no processes."""

from __future__ import annotations

import ast
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from benchmarks import stream_avro, stream_conditions
from benchmarks.stream_avro import (
    FEATURES,
    QUIX,
    SCORE_FIELD,
    STREAMSERVE,
    STREAMSERVE_JSON,
    TRANSACTION_SCHEMA,
    WireDecoder,
    avro_bodies,
    avro_records,
    build_fraud_model,
    check_avro_outputs,
    cli_calls,
    expected_scores,
    feature_rows,
    field_value,
    output_schema,
    quix_avro_command,
    round_order,
    streamserve_args,
    tensor_records,
    transactions,
    wire_header,
)
from benchmarks.stream_avro_report import avro_goals, avro_goals_text, avro_summary, avro_table
from benchmarks.stream_stats import check_values

# --------------------------------------------------------------------------- the workload


def test_transactions_are_deterministic_eight_fields_with_a_nested_merchant() -> None:
    events = transactions(50, seed=3)
    assert events == transactions(50, seed=3) and events != transactions(50, seed=4)
    first = events[0]
    assert list(first) == [f["name"] for f in TRANSACTION_SCHEMA["fields"]]
    assert len(first) == 8 and set(first["merchant"]) == {"id", "category", "country", "risk"}
    assert len({e["txn_id"] for e in events}) == 50
    assert all(0 <= e["hour_of_day"] < 24 and 0.0 <= e["merchant"]["risk"] <= 1.0 for e in events)
    assert isinstance(first["amount"], float) and isinstance(first["card_present"], bool)


def _schemas() -> dict[int, str]:
    return {7: json.dumps(TRANSACTION_SCHEMA), 8: json.dumps(output_schema())}


def test_records_are_in_the_confluent_wire_format_and_decode_back() -> None:
    events = transactions(6)
    records = avro_records(avro_bodies(events, TRANSACTION_SCHEMA), 7, partitions=4)
    assert [r.partition for r in records] == [0, 1, 2, 3, 0, 1]
    assert [r.key for r in records] == [str(i).encode() for i in range(6)]
    assert records[0].value[:5] == b"\x00\x00\x00\x00\x07" == wire_header(7)
    looked_up: list[int] = []

    def schema_text(schema_id: int) -> str:
        looked_up.append(schema_id)
        return _schemas()[schema_id]

    decode = WireDecoder(schema_text)
    assert [decode(r.value) for r in records] == [(7, e) for e in events]
    assert looked_up == [7]  # parsed once per schema id
    with pytest.raises(ValueError, match="wire format"):
        decode(b"\x01\x00\x00\x00\x07rest")


def test_the_output_schema_is_the_input_schema_plus_the_score() -> None:
    from fastavro import parse_schema

    schema = output_schema()
    assert schema["fields"][:-1] == TRANSACTION_SCHEMA["fields"]
    assert schema["fields"][-1] == {"name": SCORE_FIELD, "type": "double"}
    assert schema["name"] == "Transaction" and schema["namespace"] == "bench.payments"
    parse_schema(schema)
    assert TRANSACTION_SCHEMA["fields"][-1]["name"] == "merchant"  # not changed in place


def test_the_model_is_a_logistic_regression_over_the_five_features(tmp_path: Path) -> None:
    path = build_fraud_model(tmp_path / "fraud" / "1")
    events = transactions(20)
    rows = feature_rows(events)
    assert rows.shape == (20, 5) and rows.dtype == np.float32
    assert rows[4, 4] == np.float32(events[4]["merchant"]["risk"])
    want = 1 / (1 + np.exp(-(rows.astype(np.float64) @ np.asarray(stream_avro.WEIGHTS)
                             + stream_avro.BIAS)))  # fmt: skip
    got = expected_scores(path, events)
    assert got.shape == (20,)
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert float(np.std(got)) > 0.05  # spread, not a constant


def test_the_model_base_path_is_built_once(tmp_path: Path) -> None:
    base = stream_avro.fraud_model(tmp_path)
    model = base / "1" / "model.onnx"
    stamp = model.stat().st_mtime_ns
    assert stream_avro.fraud_model(tmp_path) == base and model.stat().st_mtime_ns == stamp


def test_tensor_records_carry_the_same_features_and_pass_the_json_check(tmp_path: Path) -> None:
    events = transactions(5)
    records = tensor_records(events, partitions=2)
    document = orjson.loads(records[3].value)
    assert document["id"] == 3
    np.testing.assert_array_equal(
        np.asarray(document["inputs"]["x"], np.float32), feature_rows(events)[3:4]
    )
    scores = expected_scores(build_fraud_model(tmp_path / "1"), events)
    expected = {str(i).encode(): np.asarray([s]) for i, s in enumerate(scores)}
    outputs = [(str(i).encode(), orjson.dumps({"id": i, "outputs": {"score": [float(s)]}}))
               for i, s in enumerate(scores)]  # fmt: skip
    assert check_values(outputs, expected, output_name="score")["ok"]


def test_field_values_follow_dotted_paths() -> None:
    event = transactions(1)[0]
    assert field_value(event, "merchant.risk") == event["merchant"]["risk"]
    assert next(field_value(event, f) for f in FEATURES) == event["amount"]


# --------------------------------------------------------------------------- output check


def _encode(record: dict[str, Any], schema_id: int = 8) -> bytes:
    from fastavro import parse_schema, schemaless_writer

    buffer = io.BytesIO()
    schema = json.loads(_schemas()[schema_id])
    schemaless_writer(buffer, parse_schema(schema), record)
    return wire_header(schema_id) + buffer.getvalue()


def _case() -> tuple[list[dict[str, Any]], dict[bytes, Any], dict[bytes, float]]:
    events = transactions(4)
    inputs = {str(i).encode(): e for i, e in enumerate(events)}
    expected = {str(i).encode(): 0.25 + 0.1 * i for i in range(4)}
    return events, inputs, expected


def test_enriched_outputs_with_every_field_and_the_score_pass() -> None:
    _events, inputs, expected = _case()
    outputs = [(k, _encode({**inputs[k], SCORE_FIELD: v + 5e-5})) for k, v in expected.items()]
    outputs.append((b"not-an-input", b"ignored"))
    report = check_avro_outputs(outputs, inputs, expected, WireDecoder(_schemas().__getitem__))
    assert report["ok"] and report["checked"] == 4 and report["wrong"] == 0
    assert report["schema_ids"] == [8] and report["extra_fields"] == []
    assert report["max_abs_diff"] == pytest.approx(5e-5, abs=1e-9)


def test_a_dropped_or_changed_field_a_wrong_score_or_bad_bytes_fail() -> None:
    _events, inputs, expected = _case()
    schemas = {**_schemas(), 7: json.dumps(TRANSACTION_SCHEMA)}
    changed = {**inputs[b"1"], "merchant": {**inputs[b"1"]["merchant"], "risk": 0.123456},
               SCORE_FIELD: expected[b"1"]}  # fmt: skip
    outputs = [
        (b"0", _encode(inputs[b"0"], 7)),  # no score (the input schema)
        (b"1", _encode(changed)),
        (b"2", _encode({**inputs[b"2"], SCORE_FIELD: expected[b"2"] + 0.01})),
        (b"3", b"\x00\x00\x00"),
    ]
    report = check_avro_outputs(outputs, inputs, expected, WireDecoder(schemas.__getitem__))
    assert not report["ok"] and report["wrong"] == 4
    text = "\n".join(report["examples"])
    assert "fraud_score missing" in text
    assert "input field(s) changed: merchant" in text
    assert "fraud_score differs by 0.01" in text
    assert "undecodable" in text


def test_a_missing_input_field_is_named_and_extra_fields_are_reported() -> None:
    _events, inputs, expected = _case()

    def decode(value: bytes) -> tuple[int, dict[str, Any]]:
        record = {k: v for k, v in inputs[value].items() if k != "txn_id"}
        if value == b"1":
            record = {**inputs[value], "model_version": 1}
        return 9, {**record, SCORE_FIELD: expected[value]}

    outputs = [(b"0", b"0"), (b"1", b"1")]
    report = check_avro_outputs(outputs, inputs, expected, decode)  # type: ignore[arg-type]
    assert report["wrong"] == 1 and "missing: txn_id" in report["examples"][0]
    assert report["extra_fields"] == ["model_version"]


def test_no_checked_output_is_not_a_pass() -> None:
    _, inputs, expected = _case()
    assert (
        check_avro_outputs([], inputs, expected, WireDecoder(_schemas().__getitem__))["ok"] is False
    )


# --------------------------------------------------------------------------- command lines


def test_streamserve_avro_runs_the_cli_with_declared_features_and_the_registry() -> None:
    topics = ("in", "out", "g")
    args = streamserve_args(STREAMSERVE, topics, "b:9092", Path("/m/fraud"), "exactly-once",
                            "http://r:1/apis/ccompat/v7")  # fmt: skip
    assert "--input-format=avro" in args and "--output-format=enriched" in args
    assert "--feature=x=amount,hour_of_day,customer_age,distance_km,merchant.risk" in args
    assert f"--output-field={SCORE_FIELD}=score:double" in args
    assert "--schema-registry-url=http://r:1/apis/ccompat/v7" in args
    assert "--guarantee=exactly-once" in args and "--commit-interval-ms=100" in args
    assert "--model-base-path=/m/fraud" in args and "--metrics-port=0" in args
    assert {"--input-topic=in", "--output-topic=out", "--group-id=g"} <= set(args)


def test_streamserve_tensor_json_uses_the_same_model_without_the_registry() -> None:
    args = streamserve_args(STREAMSERVE_JSON, ("in", "out", "g"), "b:9092", Path("/m/fraud"),
                            "at-least-once", "http://r", "client.properties",
                            {"producer": ["linger.ms=5"]})  # fmt: skip
    assert "--input-format=tensor" in args and "--output-format=prediction" in args
    assert not any(a.startswith(("--feature", "--schema-registry-url")) for a in args)
    assert "--kafka-config=client.properties" in args and "--producer-config=linger.ms=5" in args
    with pytest.raises(ValueError):
        streamserve_args(QUIX, ("in", "out", "g"), "b", Path("/m"), "exactly-once", "r")


def test_the_quix_avro_app_takes_the_registry_and_the_output_schema() -> None:
    command = quix_avro_command(Path("/venv/bin/python"), ("in", "out", "g"), "b:9092",
                                "http://r", Path("/m/model.onnx"), "exactly-once",
                                Path("/s/out.avsc"))  # fmt: skip
    assert command == ["/venv/bin/python", str(stream_avro.QUIX_DIR / "avro_app.py"), "b:9092",
                       "http://r", "in", "out", "g", "/m/model.onnx", "exactly-once", "100",
                       "/s/out.avsc"]  # fmt: skip
    assert (stream_avro.QUIX_DIR / "avro_app.py").is_file()
    assert (stream_avro.QUIX_DIR / "app.py").is_file()  # the tensor peer stays
    pins = (stream_avro.QUIX_DIR / "requirements.txt").read_text()
    assert "quixstreams==" in pins and "fastavro==" in pins


def test_the_quix_app_feeds_the_model_the_same_features_in_the_same_order() -> None:
    """The app's ``features`` function (run alone: the app needs its own venv)."""
    tree = ast.parse((stream_avro.QUIX_DIR / "avro_app.py").read_text())
    (function,) = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "features"]
    namespace: dict[str, Any] = {"Any": Any}
    exec(compile(ast.Module([function], []), "avro_app.py", "exec"), namespace)
    event = transactions(1)[0]
    assert namespace["features"](event) == [field_value(event, f) for f in FEATURES]
    source = (stream_avro.QUIX_DIR / "avro_app.py").read_text()
    assert "AvroDeserializer(schema_registry_client_config=" in source
    assert f'sdf["{SCORE_FIELD}"] = sdf.apply(' in source


def test_model_calls_and_the_first_call_come_from_the_timed_clis_log() -> None:
    log = (
        "streamserve stream ready: metrics_port=1234\n"
        "peer first call at 1700000000123\n"
        "some log line\n"
        "peer model calls: 10\n"
        "peer model rows: 300\n"
    )
    summary, first_ms = cli_calls(log)
    assert first_ms == 1700000000123.0
    assert summary["calls"] == 10 and summary["rows_per_call"] == 30.0
    summary, first_ms = cli_calls("streamserve stream ready:\n")
    assert first_ms is None and summary["calls"] is None and summary["rows_per_call"] is None


def test_the_timed_cli_counts_every_embedded_call_and_keeps_the_answer(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import asyncio

    from benchmarks import stream_cli_timed
    from streamserve.predictors.embedded import EmbeddedPredictor

    async def answer(self: Any, inputs: Any, signature_name: Any = None) -> str:
        return f"answer for {len(inputs['x'])} rows"

    monkeypatch.setattr(EmbeddedPredictor, "predict", answer)
    counters = stream_cli_timed.instrument()
    predictor = object.__new__(EmbeddedPredictor)
    for rows in (3, 5):
        result = asyncio.run(predictor.predict({"x": np.zeros((rows, 5))}))
        assert result == f"answer for {rows} rows"
    assert counters == {"calls": 2, "rows": 8}
    assert capsys.readouterr().out.count("peer first call at ") == 1


def test_rounds_alternate_the_order_of_the_systems() -> None:
    systems = [STREAMSERVE, STREAMSERVE_JSON, QUIX]
    assert round_order(systems, 0) == systems
    assert round_order(systems, 1) == [QUIX, STREAMSERVE_JSON, STREAMSERVE]
    assert round_order(systems, 2) == systems


def test_an_explicit_registry_url_is_used_as_given() -> None:
    with stream_avro.schema_registry("http://r:1/apis/ccompat/v7/") as url:
        assert url == "http://r:1/apis/ccompat/v7"


# --------------------------------------------------------------------------- conditions

STAT = "cpu  100 5 50 800 10 1 2 32 0 0\ncpu0 50 2 25 400 5 0 1 16 0 0\n"


def test_cpu_steal_is_the_stolen_share_between_two_readings() -> None:
    before = stream_conditions.cpu_times(STAT)
    assert before == (32, 1000)
    after = (before[0] + 5, before[1] + 100)
    assert stream_conditions.steal_percent(before, after) == 5.0
    assert stream_conditions.steal_percent(before, before) is None
    with pytest.raises(ValueError):
        stream_conditions.cpu_times("intr 1 2 3\n")


def test_a_load_above_one_and_a_half_on_two_cores_is_busy_and_warned() -> None:
    assert stream_conditions.is_busy(1.6, 2) and not stream_conditions.is_busy(1.5, 2)
    quiet = {"load_average": [0.4, 0.5, 0.6], "steal_percent": 0.0, "cpus": 2, "busy": False}
    busy = {**quiet, "load_average": [3.2, 2.0, 1.0], "busy": True}
    assert stream_conditions.warning(quiet, "run") is None
    assert "3.20 > 1.5 on 2 cores before run" in (stream_conditions.warning(busy, "run") or "")
    assert stream_conditions.describe(quiet) == "load 0.40/0.50/0.60, steal 0.0%"
    assert stream_conditions.describe(busy).endswith("BUSY")
    assert stream_conditions.load_range([quiet, busy]) == "0.40–3.20"
    assert stream_conditions.steal_range([quiet]) == "0.0"
    assert stream_conditions.load_range([]) == "-"


def test_a_sample_reads_this_machine() -> None:
    sample = stream_conditions.sample(0.01)
    assert len(sample["load_average"]) == 3 and sample["cpus"] >= 1
    assert sample["busy"] == stream_conditions.is_busy(sample["load_average"][0], sample["cpus"])


# --------------------------------------------------------------------------- report


def _run(system: str, guarantee: str, rps: float, cpu: float, load: float = 0.5) -> dict:
    return {
        "system": system,
        "label": f"{system} label",
        "guarantee": guarantee,
        "round": 0,
        "conditions": {
            "load_average": [load, 0.5, 0.5],
            "steal_percent": 0.1,
            "cpus": 2,
            "busy": stream_conditions.is_busy(load, 2),
        },
        "drain": {
            "throughput_rps": rps,
            "processed": 100,
            "records": 100,
            "complete": True,
            "cpu_us_per_record": {"processor": cpu, "broker": 20.0},
            "model_call": {"calls": 4, "rows_per_call": 25.0},
            "loss": {"ok": True},
        },
        "values": {"ok": True, "max_abs_diff": 1e-7},
    }


def _runs() -> list[dict]:
    return [
        _run(STREAMSERVE, "exactly-once", 12000.0, 40.0),
        _run(STREAMSERVE_JSON, "exactly-once", 14000.0, 50.0),
        _run(QUIX, "exactly-once", 6000.0, 100.0, load=2.0),
        _run(STREAMSERVE, "at-least-once", 9000.0, 70.0),
        _run(QUIX, "at-least-once", 7000.0, 100.0),
    ]


def test_the_summary_ratios_are_streamserve_avro_over_each_system_with_conditions() -> None:
    summary = avro_summary(_runs())
    eos = summary["exactly-once"]
    assert list(eos) == [STREAMSERVE, STREAMSERVE_JSON, QUIX]
    assert eos[QUIX]["streamserve_vs_this"] == {"throughput": 2.0, "cpu_us_per_record": 0.4}
    assert eos[STREAMSERVE_JSON]["streamserve_vs_this"]["cpu_us_per_record"] == 0.8
    assert eos[QUIX]["busy_runs"] == 1 and eos[STREAMSERVE]["busy_runs"] == 0


def test_the_goals_are_issue_23s_targets_with_the_load_they_ran_at() -> None:
    goals = {g["goal"]: g for g in avro_goals(avro_summary(_runs()))}
    cpu = goals[
        "exactly-once: streamserve Avro / Quix Streams (Avro serdes) processor CPU µs/record"
    ]
    assert cpu["met"] is True and cpu["target"] == 0.5 and cpu["busy"] is True
    rps = goals["exactly-once: streamserve Avro / Quix Streams (Avro serdes) records/s"]
    assert rps["met"] is True and rps["load_average_1m"] == "0.50–2.00"
    json_cpu = goals[
        "exactly-once: streamserve Avro / streamserve tensor JSON processor CPU µs/record"
    ]
    assert json_cpu["met"] is True
    alos = goals["at-least-once: streamserve Avro / Quix Streams (Avro serdes) records/s"]
    missed = pytest.approx(1 - (9 / 7) / 1.5, abs=1e-3)
    assert alos["met"] is False and alos["missed_by_fraction"] == missed
    assert not any(g.startswith("at-least-once") and "tensor JSON" in g for g in goals)
    text = avro_goals_text(list(goals.values()))
    assert "MET" in text and "MISSED by" in text and "BUSY machine" in text


def test_the_table_has_a_row_per_run_system_with_its_load() -> None:
    text = avro_table(avro_summary(_runs()))
    rows = [line for line in text.splitlines() if line.startswith("| ") and "system" not in line]
    assert len(rows) == 5
    row = "| exactly-once | quix label | 6,000 | 100 | 20 | 25.0 | 2.00, 0.40 | yes | 2.00 (busy) |"
    assert f"{row} 0.1 |" in text
