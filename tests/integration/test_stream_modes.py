"""Acceptance 1: 1,000 records → 1,000 correct outputs, in order per partition.

Real broker, real ``streamserve stream`` processes; embedded mode and each remote protocol
(a real ``streamserve serve`` process), under both delivery guarantees.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from streamserve import testing
from streamserve.testing import StreamProcess, produce, read_topic
from tests.helpers import build_tiny_model

pytestmark = pytest.mark.integration

RECORDS = 1000
PARTITIONS = 3
WIDTH = 64


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory, width=WIDTH)


@pytest.fixture(scope="module")
def model_server(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """A real ``streamserve serve`` process serving the tiny model over gRPC and REST."""
    log_path = tmp_path_factory.mktemp("server") / "serve.log"
    with testing.model_server("tiny", tiny_model, log_path) as server:
        server.wait_ready(model="tiny")
        yield {"grpc": server.grpc_url, "http": server.rest_url}


MODES = {
    "embedded": None,
    "tfserving-grpc": ("grpc", "tfserving"),
    "tfserving-rest": ("http", "tfserving"),
    "v2-grpc": ("grpc", "v2"),
    "v2-rest": ("http", "v2"),
}


def _model_args(mode: str, tiny_model: Path, request: pytest.FixtureRequest) -> list[str]:
    if MODES[mode] is None:
        return ["--model-base-path", str(tiny_model), "--model-name", "tiny"]
    server = request.getfixturevalue("model_server")
    scheme, protocol = MODES[mode]
    return ["--model-server", server[scheme], "--model-name", "tiny", "--protocol", protocol]


def _inputs(count: int) -> tuple[list[tuple[int, bytes, bytes]], dict[int, np.ndarray]]:
    """Records spread over the partitions; every 10th record carries a 2-row batch."""
    rng = np.random.default_rng(7)
    records, rows = [], {}
    for i in range(count):
        x = rng.standard_normal((2 if i % 10 == 0 else 1, WIDTH)).astype(np.float32).round(4)
        rows[i] = x
        value = json.dumps({"id": i, "inputs": {"x": x.tolist()}}).encode()
        records.append((i % PARTITIONS, f"k{i}".encode(), value))
    return records, rows


@pytest.mark.parametrize("guarantee", ["exactly-once", "at-least-once"])
@pytest.mark.parametrize("mode", list(MODES))
def test_records_become_correct_outputs_in_order(
    mode: str,
    guarantee: str,
    tiny_model: Path,
    kafka_bootstrap: str,
    topic_factory,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    import onnxruntime

    model_args = _model_args(mode, tiny_model, request)
    source, sink = topic_factory(PARTITIONS, "in"), topic_factory(PARTITIONS, "out")
    records, rows = _inputs(RECORDS)
    produce(kafka_bootstrap, source, records)

    args = [
        "--bootstrap-servers",
        kafka_bootstrap,
        "--input-topic",
        source,
        "--output-topic",
        sink,
        "--group-id",
        f"g-{source}",
        "--guarantee",
        guarantee,
        "--instance-id",
        "one",
        *model_args,
    ]
    with StreamProcess(args, tmp_path / "stream.log") as stream:
        stream.wait_ready()
        outputs = read_topic(kafka_bootstrap, sink, RECORDS, timeout=90)
    assert len(outputs) == RECORDS, stream.log_tail()

    session = onnxruntime.InferenceSession(str(tiny_model / "1" / "model.onnx"))
    by_partition: dict[int, list[int]] = defaultdict(list)
    expected_mode = "embedded" if mode == "embedded" else "remote"
    for output in outputs:
        document = output.json()
        record_id = document["id"]
        by_partition[output.partition].append(record_id)
        assert output.key == f"k{record_id}".encode()
        assert document["model"] == {"name": "tiny", "version": 1}
        assert document["mode"] == expected_mode
        expected = session.run(None, {"x": rows[record_id]})[0]
        np.testing.assert_allclose(np.array(document["outputs"]["y"]), expected, atol=1e-4)
    for partition in range(PARTITIONS):
        sent = [i for i in range(RECORDS) if i % PARTITIONS == partition]
        assert by_partition[partition] == sent, f"partition {partition} out of order or incomplete"
