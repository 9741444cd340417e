"""TF Serving warm-up files against a real ``streamserve serve`` process.

Version 1's file is written by TensorFlow itself (``tf.io.TFRecordWriter`` with
``tensorflow_serving.apis.prediction_log_pb2``, exactly as TF Serving's docs show), version
2's by streamserve's own writer (and read back by TensorFlow to prove the format), version
3's is corrupt. The server (which cannot import TensorFlow) replays 1 and 2 before they
become AVAILABLE and fails 3 with the reason in ``GetModelStatus``.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import numpy as np
import pytest

from streamserve.models.toy import build_tiny
from streamserve.repository.replay import WARMUP_FILE, predict_log, write_warmup_file

if TYPE_CHECKING:
    from .conftest import ServerProcess

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

pytest.importorskip("tensorflow_serving.apis.prediction_log_pb2")
from tensorflow_serving.apis import (  # noqa: E402
    get_model_status_pb2,
    model_service_pb2_grpc,
)

WIDTH = 4
TF_RECORDS = 3
OWN_RECORDS = 5

# Runs in a child process: TensorFlow writes version 1's file and reads version 2's.
TF_SCRIPT = textwrap.dedent(
    """
    import sys
    import numpy as np
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

    written, ours = sys.argv[1], sys.argv[2]
    with tf.io.TFRecordWriter(written) as writer:
        for i in range({records}):
            request = predict_pb2.PredictRequest()
            request.model_spec.name = "tiny"
            request.model_spec.signature_name = "serving_default"
            request.inputs["x"].CopyFrom(
                tf.make_tensor_proto(np.full((2, {width}), i, np.float32)))
            log = prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())
    count = 0
    for record in tf.data.TFRecordDataset(ours):
        log = prediction_log_pb2.PredictionLog.FromString(record.numpy())
        assert log.WhichOneof("log_type") == "predict_log"
        tf.make_ndarray(log.predict_log.request.inputs["x"])
        count += 1
    print("tensorflow read", count)
    """
).format(records=TF_RECORDS, width=WIDTH)


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("warm") / "tiny"
    for version in (1, 2, 3):
        build_tiny(base / str(version), width=WIDTH)
    rows = np.ones((1, WIDTH), np.float32)
    ours = write_warmup_file(base / "2", [predict_log({"x": rows * i}) for i in range(OWN_RECORDS)])
    tf_file = base / "1" / WARMUP_FILE
    tf_file.parent.mkdir(parents=True)
    result = subprocess.run(
        [sys.executable, "-c", TF_SCRIPT, str(tf_file), str(ours)],
        capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"tensorflow read {OWN_RECORDS}" in result.stdout
    corrupt = bytearray(ours.read_bytes())
    corrupt[20] ^= 0xFF  # inside the first record's data
    (base / "3" / WARMUP_FILE).parent.mkdir(parents=True)
    (base / "3" / WARMUP_FILE).write_bytes(bytes(corrupt))
    return base


@pytest.fixture(scope="module")
def server(base: Path, serve_process_module: Callable[..., ServerProcess]) -> ServerProcess:
    config = base.parent / "models.config"
    config.write_text(
        f'model_config_list {{ config {{ name: "tiny" base_path: "{base}" '
        "model_version_policy { all {} } } }"
    )
    process = serve_process_module(f"--model_config_file={config}")
    return process.wait_ready(model="tiny")


def _status(server: ServerProcess) -> dict[int, tuple[str, int, str]]:
    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = model_service_pb2_grpc.ModelServiceStub(channel)
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = "tiny"
        response = stub.GetModelStatus(request, timeout=30)
    names = get_model_status_pb2.ModelVersionStatus.State.Name
    return {
        s.version: (names(s.state), s.status.error_code, s.status.error_message)
        for s in response.model_version_status
    }


def test_warmup_requests_are_replayed_before_available(server: ServerProcess, base: Path) -> None:
    log = server.log_text()
    for version, count in ((1, TF_RECORDS), (2, OWN_RECORDS)):
        replayed = log.index(
            f"Replayed {count} warm-up requests from {base / str(version) / WARMUP_FILE} "
            f"for servable tiny version {version}"
        )
        available = log.index(f"Successfully loaded servable tiny version {version} ")
        assert replayed < available


def test_a_corrupt_warmup_file_fails_that_version_only(server: ServerProcess) -> None:
    status = _status(server)
    assert status[1][0] == "AVAILABLE" and status[2][0] == "AVAILABLE"
    state, code, message = status[3]
    assert state == "END"
    assert code == grpc.StatusCode.DATA_LOSS.value[0]
    assert "tf_serving_warmup_requests: record 0 at byte 0: corrupted record data" in message
