"""The same records give the same answer in every mode: embedded and the four remote
protocols (TF Serving gRPC/REST, V2 gRPC/REST) against a real ``streamserve serve``.

Each mode is assembled exactly as ``streamserve stream`` assembles it (codec included);
each record is decoded, predicted through the processor's invoker (bisection, DLQ
reasons) and encoded. Outputs must agree within 1e-6 and rejected records must carry the
same DLQ stage and reason.

The model is the toy ``multi``: x FP32 [N,4] → 2x; ids INT64 [N,2] → ids+1; names STRING
[N] → echo.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson
import pytest

from streamserve.models.toy import build_multi
from streamserve.predictors.base import Predictor
from streamserve.predictors.factory import PredictorSpec
from streamserve.stream.assembly import PipelineSpec, assemble
from streamserve.stream.codecs import InputRecord
from streamserve.stream.errors import RecordError
from streamserve.stream.invoker import build_invoker
from streamserve.stream.processor import ProcessorConfig

if TYPE_CHECKING:
    from .conftest import ServerProcess

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

CONFIG = ProcessorConfig(
    bootstrap_servers="127.0.0.1:1", input_topic="in", output_topic="out", group_id="g"
)

RECORDS: dict[str, dict[str, Any]] = {
    "integer JSON": {"x": [[1, 2, 3, 4]], "ids": [[1, 2]], "names": ["a"]},
    "float JSON": {"x": [[0.1, -2.5, 3.75, 1e-3]], "ids": [[7, 8]], "names": ["b"]},
    "nested lists": {
        "x": [[1, 2.5, 3, 4], [5, 6, 7, 8.125]],
        "ids": [[1, 2], [3, 2**40]],
        "names": ["caf\u00e9", ""],
    },
    "b64 bytes": {
        "x": [[1, 1, 1, 1]],
        "ids": [[0, 0]],
        "names": [{"b64": base64.b64encode(b"\x00\x01binary").decode()}],
    },
    "wrong shape": {"x": [[1, 2, 3]], "ids": [[1, 2]], "names": ["c"]},
    "wrong name": {"z": [[1, 2, 3, 4]], "ids": [[1, 2]], "names": ["d"]},
}

REMOTE_MODES = [
    ("tfserving", "grpc"),
    ("tfserving", "http"),
    ("v2", "grpc"),
    ("v2", "http"),
]


@pytest.fixture(scope="module")
def multi(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("models") / "multi"
    build_multi(base / "1")
    return base


@pytest.fixture(scope="module")
def server(serve_process_module: Callable[..., ServerProcess], multi: Path) -> ServerProcess:
    flags = ["--model_name=multi", f"--model_base_path={multi}"]
    return serve_process_module(*flags).wait_ready(model="multi")


def record_of(index: int, inputs: Mapping[str, Any]) -> InputRecord:
    value = orjson.dumps({"id": index, "inputs": inputs})
    return InputRecord("in", 0, index, None, value)


Result = tuple[str, Any]  # ("output", outputs) or ("dlq", (stage, reason))


async def run_mode(spec: PredictorSpec) -> dict[str, Result]:
    """Each record's output document's ``outputs`` or its DLQ (stage, reason)."""
    predictors: list[Predictor] = []

    def keep(predictor: Predictor) -> Predictor:
        predictors.append(predictor)
        return predictor

    async with contextlib.AsyncExitStack() as stack:
        processor = await assemble(PipelineSpec(CONFIG, spec), stack, wrap=keep)
        invoker = build_invoker(predictors)
        codec = processor.codec
        results: dict[str, Result] = {}
        for index, (case, inputs) in enumerate(RECORDS.items()):
            try:
                decoded = await codec.decode(record_of(index, inputs))
            except RecordError as error:
                results[case] = ("dlq", (error.stage, error.reason))
                continue
            (outcome,) = await invoker.predict_each([decoded], codec.signature_name)
            if outcome.error is not None:
                results[case] = ("dlq", (outcome.error.stage, outcome.error.reason))
                continue
            assert outcome.rows is not None
            value = codec.encode(decoded, outcome.rows, "multi", 1, 0.0, outcome.mode)
            results[case] = ("output", orjson.loads(value)["outputs"])
        return results


def assert_same_outputs(got: Any, expected: Any, where: str) -> None:
    assert got.keys() == expected.keys(), where
    for name, values in expected.items():
        if name == "names_out":
            assert got[name] == values, f"{where}: {name}"
        else:
            np.testing.assert_allclose(got[name], values, rtol=1e-6, atol=1e-6, err_msg=where)


def test_every_mode_gives_the_same_outputs_and_dlq_reasons(
    server: ServerProcess, multi: Path
) -> None:
    embedded = asyncio.run(run_mode(PredictorSpec(model_name="multi", model_base_path=multi)))
    assert {case: kind for case, (kind, _) in embedded.items()} == {
        "integer JSON": "output",
        "float JSON": "output",
        "nested lists": "output",
        "b64 bytes": "output",
        "wrong shape": "dlq",
        "wrong name": "dlq",
    }
    assert embedded["integer JSON"][1]["y"] == [[2.0, 4.0, 6.0, 8.0]]
    assert embedded["b64 bytes"][1]["names_out"] == ["\x00\x01binary"]  # UTF-8: as text
    for case, (kind, result) in embedded.items():
        print(f"\n{case}: {kind}: {result}", end="")
    for protocol, transport in REMOTE_MODES:
        target = f"grpc://{server.grpc_target}" if transport == "grpc" else server.rest_url
        spec = PredictorSpec([target], model_name="multi", protocol=protocol)
        remote = asyncio.run(run_mode(spec))
        for case, (kind, expected) in embedded.items():
            where = f"{protocol}-{transport}: {case}"
            assert remote[case][0] == kind, f"{where}: {remote[case]}"
            if kind == "dlq":
                assert remote[case][1] == expected, where
            else:
                assert_same_outputs(remote[case][1], expected, where)
        print(f"\n{protocol}-{transport}: the same {len(embedded)} results", end="")
