"""Plain JSON events with nested fields through declared features, as the CLI runs them:
embedded and remote (TF Serving gRPC and V2 gRPC, a real ``streamserve serve``), enriched
outputs with the model's answer, and a record missing a required field in the DLQ."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from streamserve import testing
from streamserve.testing import StreamProcess, produce, read_topic
from tests.helpers import build_tiny_model

pytestmark = pytest.mark.integration

RECORDS = 200
WIDTH = 3
MODES = {"embedded": None, "tfserving-grpc": "tfserving", "v2-grpc": "v2"}


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory, width=WIDTH)


@pytest.fixture(scope="module")
def grpc_url(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log_path = tmp_path_factory.mktemp("server") / "serve.log"
    with testing.model_server("tiny", tiny_model, log_path) as server:
        server.wait_ready(model="tiny")
        yield server.grpc_url


def _event(i: int) -> dict[str, object]:
    merchant: dict[str, object] = {"category": "food" if i % 2 else "travel"}
    if i % 3:
        merchant["risk"] = round(i / RECORDS, 3)  # else the declared default, 0.5
    return {"txn_id": f"t{i}", "amount": 10.0 + i, "age": 20 + i % 50, "merchant": merchant}


def _features(event: dict[str, object]) -> list[float]:
    merchant = event["merchant"]
    assert isinstance(merchant, dict)
    return [event["amount"], event["age"], merchant.get("risk", 0.5)]  # type: ignore[list-item]


@pytest.mark.parametrize("mode", list(MODES))
def test_nested_json_events_come_out_enriched_with_the_models_answer(
    mode: str,
    tiny_model: Path,
    kafka_bootstrap: str,
    topic_factory,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    import onnxruntime

    source, sink = topic_factory(1, "events"), topic_factory(1, "scored")
    events = [_event(i) for i in range(RECORDS)]
    broken = {"txn_id": "broken", "amount": 1.0, "merchant": {}}  # no "age"
    values = [json.dumps(e).encode() for e in events[:100]] + [json.dumps(broken).encode()]
    values += [json.dumps(e).encode() for e in events[100:]]
    produce(kafka_bootstrap, source, [(0, None, value) for value in values])
    if MODES[mode] is None:
        model = ["--model-base-path", str(tiny_model)]
    else:
        url = request.getfixturevalue("grpc_url")
        model = ["--model-server", url, "--protocol", str(MODES[mode])]
    args = [
        "--bootstrap-servers", kafka_bootstrap, "--input-topic", source, "--output-topic", sink,
        "--group-id", f"g-{source}", "--instance-id", "one", *model, "--model-name", "tiny",
        "--input-format", "json", "--output-format", "enriched", "--id-field", "txn_id",
        "--feature", "x=amount,age,merchant.risk", "--feature-default", "merchant.risk=0.5",
        "--output-field", "score=y[0]", "--output-field", "all_scores=y",
        "--output-field", "model_version=$model_version",
    ]  # fmt: skip
    with StreamProcess(args, tmp_path / "stream.log") as stream:
        stream.wait_ready()
        outputs = read_topic(kafka_bootstrap, sink, RECORDS, timeout=90)
        dead = read_topic(kafka_bootstrap, f"{source}.dlq", 1, timeout=30)
    assert len(outputs) == RECORDS, stream.log_tail()
    session = onnxruntime.InferenceSession(str(tiny_model / "1" / "model.onnx"))
    x = np.array([_features(e) for e in events], np.float32)
    expected = session.run(None, {"x": x})[0]
    for event, want, output in zip(events, expected, outputs, strict=True):
        document = output.json()
        assert {k: document[k] for k in event} == event  # every input field kept, as it was
        assert document["model_version"] == 1
        np.testing.assert_allclose(document["all_scores"], want, atol=1e-4)
        assert document["score"] == pytest.approx(float(want[0]), abs=1e-4)
    assert len(dead) == 1 and dead[0].value == values[100]
    reason = dict(dead[0].headers)["streamserve.error.reason"].decode()
    assert "'age' is missing" in reason
