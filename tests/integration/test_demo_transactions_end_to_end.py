"""``streamserve demo transactions`` end to end, as the CLI, on the session's broker and
registry: both modes, every input comes out once per mode as an enriched Avro event (read
back here with ``AvroDeserializer``) whose score is the model's own answer."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("sklearn")
pytest.importorskip("streamserve.stream.codecs.avro", reason="the Avro record format")

from streamserve.models import transactions as tx
from streamserve.processes import ChildProcess, streamserve_command
from streamserve.testing import read_topic

pytestmark = pytest.mark.integration

PACED, RECORDS = 6, 30


def _registry_get(url: str, path: str) -> object:
    import httpx

    reply = httpx.get(f"{url}/{path}", timeout=10)
    reply.raise_for_status()
    return reply.json()


def test_demo_enriches_every_transaction_in_both_modes(
    kafka_bootstrap: str, schema_registry_url: str, tmp_path: Path
) -> None:
    import joblib
    from confluent_kafka.schema_registry import SchemaRegistryClient
    from confluent_kafka.schema_registry.avro import AvroDeserializer
    from confluent_kafka.serialization import MessageField, SerializationContext

    base = tmp_path / "models" / "transactions"
    command = streamserve_command(
        "demo",
        "transactions",
        f"--model-base-path={base}",
        f"--work-dir={tmp_path}",
        f"--bootstrap-servers={kafka_bootstrap}",
        f"--schema-registry-url={schema_registry_url}",
        f"--paced={PACED}",
        f"--records={RECORDS}",
        "--rate=50",
        "--show=2",
    )
    demo = ChildProcess(command, tmp_path / "demo-output.log", name="streamserve demo")
    demo.start()
    try:
        code = demo.wait(420)
    finally:
        demo.kill()
    output = demo.log_text()
    assert code == 0, output
    for mode in ("remote", "embedded"):
        assert f"== {mode} mode, exactly-once: {PACED + RECORDS}/{PACED + RECORDS}" in output
    assert "→ fraud_score=" in output and "(model v1)" in output, output
    total = PACED + RECORDS
    assert f"the same transactions as in remote mode: {total}/{total} scores equal" in output
    assert "burst records/s" in output, output

    # the outputs, read back independently: once per input per mode, enriched, scored
    registry = SchemaRegistryClient({"url": schema_registry_url})
    deserialize = AvroDeserializer(registry)
    context = SerializationContext("transactions-scored", MessageField.VALUE)
    records = read_topic(kafka_bootstrap, "transactions-scored", 2 * (PACED + RECORDS))
    decoded = [deserialize(r.value, context) for r in records]
    ours = [d for d in decoded if d["txn_id"].startswith(("t-paced-", "t-burst-"))]
    counts = Counter(d["txn_id"] for d in ours)
    assert len(counts) == PACED + RECORDS and set(counts.values()) == {2}, counts
    for record in ours:
        assert 0.0 <= record["fraud_score"] <= 1.0 and record["model_version"] == 1

    # each mode's inputs beside their outputs (the demo's events-<mode>.json): every input
    # field kept, the score equal to the model's in-process answer
    model = joblib.load(base / "1" / tx.MODEL_FILE)
    for mode in ("remote", "embedded"):
        pairs = json.loads((tmp_path / f"events-{mode}.json").read_text())
        assert len(pairs) == PACED + RECORDS
        for pair in pairs:
            for name, value in pair["input"].items():
                assert pair["output"][name] == value, (mode, name, pair)
        features = np.array([[_field(p["input"], path) for path in tx.FEATURES] for p in pairs])
        expected = model.predict_proba(features)[:, 1]
        scores = np.array([p["output"]["fraud_score"] for p in pairs])
        np.testing.assert_allclose(scores, expected, rtol=0, atol=1e-9)

    # both schemas are in the registry; the output's is the input's plus the prediction fields
    subjects = _registry_get(schema_registry_url, "subjects")
    assert isinstance(subjects, list)
    assert {"transactions-value", "transactions-scored-value"} <= set(subjects)
    latest = registry.get_latest_version("transactions-scored-value")
    fields = [field["name"] for field in json.loads(latest.schema.schema_str)["fields"]]
    inputs = [field["name"] for field in tx.TRANSACTION_SCHEMA["fields"]]
    assert fields[: len(inputs)] == inputs
    assert set(fields[len(inputs) :]) == {"fraud_score", "model_version", "latency_ms"}


def _field(record: dict[str, object], path: str) -> float:
    value: object = record
    for part in path.split("."):
        assert isinstance(value, dict)
        value = value[part]
    assert isinstance(value, (int, float))
    return float(value)
