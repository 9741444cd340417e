"""Replay TF Serving's warm-up file against a servable, without TensorFlow.

``<version>/assets.extra/tf_serving_warmup_requests`` is a TFRecord file (see
:mod:`.tfrecord`) of ``tensorflow.serving.PredictionLog`` protos. Each record's request
runs against the freshly loaded servable, in file order; responses in the logs are
ignored (as in TF Serving). The whole file is read and checked (framing, CRCs, protos,
the 1,000-record limit) before the first request runs.

Every failure raises a :class:`~streamserve.errors.StreamserveError` whose message names
the file and the record: the version's load fails with it, so ``GetModelStatus`` shows
it. Codes: ``DATA_LOSS`` for a corrupt file, ``INVALID_ARGUMENT`` for too many records,
an unsupported log type or a request the model rejects.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from google.protobuf.message import DecodeError

from streamserve.errors import DataLoss, InvalidArgument, StreamserveError
from streamserve.protos.gen.tensorflow_serving.apis import prediction_log_pb2
from streamserve.repository.tfrecord import parse_records, write_records
from streamserve.runtimes.base import (
    CLASSIFY_METHOD,
    DEFAULT_SIGNATURE,
    REGRESS_METHOD,
    Servable,
    Tensors,
)
from streamserve.runtimes.validation import get_signature
from streamserve.tensors.tf_proto import numpy_to_tensor_proto, tensor_proto_to_numpy

WARMUP_FILE = Path("assets.extra") / "tf_serving_warmup_requests"
MAX_WARMUP_RECORDS = 1000  # TF Serving's limit


def read_warmup_logs(path: Path) -> list[Any]:
    """Parse every ``PredictionLog`` in ``path``; raises before anything runs."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataLoss(f"cannot read warm-up file {path}: {exc}") from exc
    logs = []
    for index, record in enumerate(parse_records(data, f"warm-up file {path}")):
        if index >= MAX_WARMUP_RECORDS:
            raise InvalidArgument(
                f"warm-up file {path} holds more than the maximum of {MAX_WARMUP_RECORDS} records"
            )
        logs.append(_parse_log(record, index, path))
    return logs


def replay_warmup_file(servable: Servable, path: Path) -> int:
    """Run every request logged in ``path`` against ``servable``; returns how many ran."""
    logs = read_warmup_logs(path)
    for index, log in enumerate(logs):
        try:
            replay_log(servable, log)
        except StreamserveError as exc:
            raise StreamserveError(
                f"warm-up request {index} of {path} failed: {exc.message}", exc.code
            ) from exc
        except Exception as exc:
            raise StreamserveError(f"warm-up request {index} of {path} failed: {exc!r}") from exc
    return len(logs)


def replay_log(servable: Servable, log: Any) -> None:
    """Run one ``PredictionLog``'s request."""
    kind = log.WhichOneof("log_type")
    replay = _REPLAYERS.get(kind or "")
    if replay is None:
        raise InvalidArgument(
            f"unsupported log type {kind or '(none or unknown)'}; warm-up replays "
            f"{', '.join(sorted(_REPLAYERS))}"
        )
    replay(servable, getattr(log, kind or "").request)


def _parse_log(record: bytes, index: int, path: Path) -> Any:
    log = prediction_log_pb2.PredictionLog()
    try:
        log.ParseFromString(record)
    except DecodeError as exc:
        raise DataLoss(
            f"warm-up file {path}: record {index} is not a PredictionLog: {exc}"
        ) from exc
    return log


def _replay_predict(servable: Servable, request: Any) -> None:
    inputs = {name: tensor_proto_to_numpy(proto, name) for name, proto in request.inputs.items()}
    signature = request.model_spec.signature_name or DEFAULT_SIGNATURE
    servable.predict(inputs, signature, list(request.output_filter) or None)


def _replay_classify(servable: Servable, request: Any) -> None:
    _run_examples(servable, request.model_spec.signature_name, request.input, CLASSIFY_METHOD)


def _replay_regress(servable: Servable, request: Any) -> None:
    _run_examples(servable, request.model_spec.signature_name, request.input, REGRESS_METHOD)


def _replay_multi_inference(servable: Servable, request: Any) -> None:
    for task in request.tasks:
        method = task.method_name
        if method not in (CLASSIFY_METHOD, REGRESS_METHOD):
            raise InvalidArgument(f"multi-inference task has unsupported method {method!r}")
        _run_examples(servable, task.model_spec.signature_name, request.input, method)


def _run_examples(servable: Servable, signature_name: str, request_input: Any, method: str) -> None:
    # tf.Example handling is shared with the server's Classify/Regress (pure functions).
    from streamserve.server import examples

    signature = get_signature(servable.signatures, signature_name or DEFAULT_SIGNATURE)
    features = examples.examples_from_proto(request_input)
    if not features:
        raise InvalidArgument("Input is empty: no examples given")
    inputs: Tensors
    if signature.method_name == method:
        inputs = examples.serialized_examples_input(signature, features)
    else:
        inputs = examples.features_to_inputs(signature, features, method)
    servable.predict(inputs, signature.name)


_REPLAYERS: dict[str, Callable[[Servable, Any], None]] = {
    "predict_log": _replay_predict,
    "classify_log": _replay_classify,
    "regress_log": _replay_regress,
    "multi_inference_log": _replay_multi_inference,
}


def predict_log(
    inputs: Mapping[str, np.ndarray], signature_name: str = "", model_name: str = ""
) -> Any:
    """A ``PredictionLog`` holding one predict request, for :func:`write_warmup_file`."""
    log = prediction_log_pb2.PredictionLog()
    request = log.predict_log.request
    request.model_spec.name = model_name
    request.model_spec.signature_name = signature_name
    for name, array in inputs.items():
        numpy_to_tensor_proto(array, out=request.inputs[name], name=name)
    return log


def write_warmup_file(version_dir: Path, logs: Iterable[Any]) -> Path:
    """Write ``logs`` (``PredictionLog`` s) as ``version_dir``'s TF Serving warm-up file."""
    path = Path(version_dir) / WARMUP_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    write_records(path, (log.SerializeToString() for log in logs))
    return path
