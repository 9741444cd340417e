"""The stream processor runs a ``model.py`` model and a ``model.joblib`` scikit-learn model,
each embedded and remote (TF Serving gRPC): 1,000 records → 1,000 correct outputs,
exactly-once, in order per partition, on a real broker with real processes."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest

from streamserve.testing import StreamProcess, produce, read_topic
from tests.custom_models import (
    build_both,
    expected_python,
    expected_sklearn,
    sample_rows,
    serve_both,
)

if TYPE_CHECKING:
    from .conftest import ServerProcess

pytestmark = [pytest.mark.integration, pytest.mark.timeout(400)]

RECORDS = 1000
PARTITIONS = 3
INPUT_NAME = {"pyiris": "x", "skiris": "inputs"}
INPUT_DTYPE = {"pyiris": "float32", "skiris": "float64"}
CONFIG = """
model_config_list {{
  config {{ name: "pyiris" base_path: "{pyiris}" model_version_policy {{ all {{}} }} }}
  config {{ name: "skiris" base_path: "{skiris}" model_version_policy {{ all {{}} }} }}
}}
"""


@pytest.fixture(scope="module")
def bases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build_both(tmp_path_factory.mktemp("custom"))


@pytest.fixture(scope="module")
def server(
    bases: dict[str, Path],
    tmp_path_factory: pytest.TempPathFactory,
    serve_process_module: Callable[..., ServerProcess],
) -> ServerProcess:
    return serve_both(
        serve_process_module, tmp_path_factory.mktemp("config"), CONFIG.format(**bases)
    )


def _records(model: str) -> tuple[list[tuple[int, bytes, bytes]], dict[int, np.ndarray]]:
    """Every 10th record carries two rows."""
    features = sample_rows(RECORDS * 2, seed=5)
    records, rows = [], {}
    for i in range(RECORDS):
        x = features[2 * i : 2 * i + (2 if i % 10 == 0 else 1)]
        rows[i] = x
        value = json.dumps({"id": i, "inputs": {INPUT_NAME[model]: x.tolist()}}).encode()
        records.append((i % PARTITIONS, f"k{i}".encode(), value))
    return records, rows


def _expected(bases: dict[str, Path], model: str, version: int, x: np.ndarray) -> dict:
    if model == "pyiris":
        return expected_python(bases[model], version, x.astype(np.float32))
    return {"predictions": expected_sklearn(bases[model], version, x)["predictions"]}


@pytest.mark.parametrize("mode", ["embedded", "tfserving-grpc"])
@pytest.mark.parametrize("model", ["pyiris", "skiris"])
def test_custom_model_in_the_stream(
    mode: str,
    model: str,
    bases: dict[str, Path],
    kafka_bootstrap: str,
    topic_factory: Callable[..., str],
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    if mode == "embedded":
        model_args = ["--model-base-path", str(bases[model]), "--model-name", model]
    else:
        url = request.getfixturevalue("server").grpc_url
        model_args = ["--model-server", url, "--model-name", model, "--protocol", "tfserving"]
        # remote mode does not read the model's dtypes: JSON floats default to float32
        model_args += ["--input-dtype", f"{INPUT_NAME[model]}={INPUT_DTYPE[model]}"]
    source, sink = topic_factory(PARTITIONS, "in"), topic_factory(PARTITIONS, "out")
    records, rows = _records(model)
    produce(kafka_bootstrap, source, records)
    args = [
        "--bootstrap-servers", kafka_bootstrap, "--input-topic", source, "--output-topic", sink,
        "--group-id", f"g-{source}", "--guarantee", "exactly-once", "--instance-id", "one",
        *model_args,
    ]  # fmt: skip
    with StreamProcess(args, tmp_path / "stream.log") as stream:
        stream.wait_ready()
        outputs = read_topic(kafka_bootstrap, sink, RECORDS, timeout=120)
    assert len(outputs) == RECORDS, stream.log_tail()

    by_partition: dict[int, list[int]] = defaultdict(list)
    for output in outputs:
        document = output.json()
        record_id = document["id"]
        by_partition[output.partition].append(record_id)
        assert document["model"] == {"name": model, "version": 2}  # latest of both versions
        assert document["mode"] == ("embedded" if mode == "embedded" else "remote")
        want = _expected(bases, model, 2, rows[record_id])
        for name, values in want.items():
            np.testing.assert_allclose(np.array(document["outputs"][name]), values, rtol=1e-6)
    for partition in range(PARTITIONS):
        sent = [i for i in range(RECORDS) if i % PARTITIONS == partition]
        assert by_partition[partition] == sent, f"partition {partition} out of order or incomplete"
