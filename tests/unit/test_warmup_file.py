"""TF Serving warm-up files without TensorFlow: TFRecord framing with CRC-32C checks,
``PredictionLog`` replay, and the manager failing a version whose file is bad."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import MappingProxyType

import numpy as np
import pytest

from streamserve.errors import Code, DataLoss, InvalidArgument, StreamserveError
from streamserve.models.toy import build_tiny
from streamserve.protos.gen.tensorflow_serving.apis import prediction_log_pb2
from streamserve.repository import ModelConfig, ModelManager, VersionState
from streamserve.repository.replay import (
    MAX_WARMUP_RECORDS,
    WARMUP_FILE,
    predict_log,
    read_warmup_logs,
    replay_warmup_file,
    write_warmup_file,
)
from streamserve.repository.tfrecord import (
    crc32c,
    frame,
    masked_crc32c,
    parse_records,
    read_records,
    write_records,
)
from streamserve.runtimes.base import Signature, Tensors, TensorSpec

X = np.arange(8, dtype=np.float32).reshape(2, 4)


class RecordingServable:
    """Records every call; one signature ``serving_default``: x float32[?,4] → y."""

    def __init__(self, fail: bool = False) -> None:
        self.calls: list[tuple[dict[str, np.ndarray], str, Sequence[str] | None]] = []
        self.fail = fail
        spec = TensorSpec("x", np.dtype(np.float32), (None, 4))
        out = TensorSpec("y", np.dtype(np.float32), (None,))
        self.signatures = MappingProxyType(
            {"serving_default": Signature("serving_default", {"x": spec}, {"y": out})}
        )

    def predict(
        self,
        inputs: Mapping[str, np.ndarray],
        signature_name: str = "serving_default",
        output_filter: Sequence[str] | None = None,
    ) -> Tensors:
        if self.fail:
            raise InvalidArgument("input 'x': expected float32[?,4]")
        self.calls.append((dict(inputs), signature_name, output_filter))
        return {"y": np.asarray(inputs["x"]).sum(axis=1)}

    def close(self) -> None:
        pass


# -- TFRecord ---------------------------------------------------------------------------------


def test_crc32c_matches_the_standard_check_value() -> None:
    assert crc32c(b"123456789") == 0xE3069283
    assert crc32c(b"") == 0


def test_records_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "data.tfrecord"
    assert write_records(path, [b"one", b"", b"three" * 100]) == 3
    assert list(read_records(path)) == [b"one", b"", b"three" * 100]


def test_frame_layout_is_length_crc_data_crc() -> None:
    framed = frame(b"abc")
    assert framed[:8] == (3).to_bytes(8, "little")
    assert int.from_bytes(framed[8:12], "little") == masked_crc32c(framed[:8])
    assert framed[12:15] == b"abc"
    assert int.from_bytes(framed[15:], "little") == masked_crc32c(b"abc")


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda b: b[:-2], "truncated record"),
        (lambda b: b[:5], "truncated header"),
        (lambda b: bytes([b[0] ^ 1]) + b[1:], "corrupted record length"),
        (lambda b: b[:13] + bytes([b[13] ^ 0xFF]) + b[14:], "corrupted record data"),
    ],
)
def test_damaged_framing_is_data_loss_naming_the_record(damage, reason: str) -> None:  # type: ignore[no-untyped-def]
    data = frame(b"first") + frame(b"second")
    damaged = frame(b"first") + damage(frame(b"second"))
    assert list(parse_records(data)) == [b"first", b"second"]
    with pytest.raises(DataLoss, match=f"record 1 at byte 21: {reason}"):
        list(parse_records(damaged, "file"))


# -- replay -----------------------------------------------------------------------------------


def test_predict_logs_are_replayed_in_order(tmp_path: Path) -> None:
    logs = [predict_log({"x": X}), predict_log({"x": X + 1}, "serving_default")]
    path = write_warmup_file(tmp_path, logs)
    assert path == tmp_path / "assets.extra" / "tf_serving_warmup_requests"
    servable = RecordingServable()
    assert replay_warmup_file(servable, path) == 2
    assert [call[1] for call in servable.calls] == ["serving_default", "serving_default"]
    np.testing.assert_array_equal(servable.calls[0][0]["x"], X)
    np.testing.assert_array_equal(servable.calls[1][0]["x"], X + 1)


def test_regress_log_feeds_examples_to_a_plain_signature(tmp_path: Path) -> None:
    log = prediction_log_pb2.PredictionLog()
    example = log.regress_log.request.input.example_list.examples.add()
    example.features.feature["x"].float_list.value.extend([1.0, 2.0, 3.0, 4.0])
    servable = RecordingServable()
    assert replay_warmup_file(servable, write_warmup_file(tmp_path, [log])) == 1
    np.testing.assert_array_equal(servable.calls[0][0]["x"], [[1.0, 2.0, 3.0, 4.0]])


def test_a_failing_request_fails_with_its_index_and_code(tmp_path: Path) -> None:
    path = write_warmup_file(tmp_path, [predict_log({"x": X})])
    with pytest.raises(StreamserveError, match=r"warm-up request 0 of .* failed: input 'x'") as e:
        replay_warmup_file(RecordingServable(fail=True), path)
    assert e.value.code == Code.INVALID_ARGUMENT


def test_a_log_without_a_request_type_is_refused(tmp_path: Path) -> None:
    path = write_warmup_file(tmp_path, [prediction_log_pb2.PredictionLog()])
    with pytest.raises(StreamserveError, match="unsupported log type"):
        replay_warmup_file(RecordingServable(), path)


def test_a_record_that_is_not_a_prediction_log_is_data_loss(tmp_path: Path) -> None:
    path = tmp_path / "warmup"
    write_records(path, [b"\xff\xff\xff"])
    with pytest.raises(DataLoss, match="record 0 is not a PredictionLog"):
        read_warmup_logs(path)


def test_more_than_the_maximum_of_records_is_refused(tmp_path: Path) -> None:
    log = predict_log({"x": X[:1]}).SerializeToString()
    path = tmp_path / "warmup"
    write_records(path, [log] * (MAX_WARMUP_RECORDS + 1))
    with pytest.raises(InvalidArgument, match="more than the maximum of 1000"):
        read_warmup_logs(path)


# -- the manager ------------------------------------------------------------------------------


def _tiny_with_warmup(base: Path, version: int, corrupt: bool = False) -> Path:
    version_dir = base / str(version)
    build_tiny(version_dir, width=4)
    path = write_warmup_file(version_dir, [predict_log({"x": X})] * 3)
    if corrupt:
        data = bytearray(path.read_bytes())
        data[-1] ^= 0xFF
        path.write_bytes(bytes(data))
    return version_dir


def test_manager_replays_before_available_and_fails_a_corrupt_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    base = tmp_path / "m"
    _tiny_with_warmup(base, 1)
    _tiny_with_warmup(base, 2, corrupt=True)
    from streamserve.repository import VersionPolicy

    config = ModelConfig("m", base, version_policy=VersionPolicy.all())
    events: list[str] = []
    manager = ModelManager([config], file_system_poll_wait_seconds=0)
    manager.add_listener(lambda name, version, state, _: events.append(f"{version}:{state}"))
    with caplog.at_level(logging.INFO):
        manager.start()
    try:
        statuses = {s.version: s for s in manager.status("m")}
        assert statuses[1].state == VersionState.AVAILABLE
        assert statuses[2].state == VersionState.END
        assert statuses[2].error_code == Code.DATA_LOSS
        assert "tf_serving_warmup_requests: record 2" in statuses[2].error_message
        assert "corrupted record data (CRC mismatch)" in statuses[2].error_message
    finally:
        manager.stop()
    messages = [r.getMessage() for r in caplog.records]
    replayed = _first(messages, "Replayed 3 warm-up requests")
    loaded = _first(messages, "Successfully loaded servable m version 1")
    assert replayed < loaded
    assert str(base / "1" / WARMUP_FILE) in messages[replayed]


def _first(messages: list[str], text: str) -> int:
    return next(index for index, message in enumerate(messages) if text in message)
