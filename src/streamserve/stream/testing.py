"""Helpers for testing and demonstrating the stream processor against a real broker.

- :class:`StreamProcess` runs ``streamserve stream`` as a child process and waits for its
  readiness line (never sleeps for readiness).
- :func:`produce` / :func:`read_topic` write and read records (``read_committed``).
- :func:`build_image_classifier` writes a tiny ONNX image classifier with
  ``processing.json`` and ``labels.txt`` (needs the ``onnx`` package), so image pipelines
  can be tested without the real ImageNet model.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from streamserve.processes import restartable_port

READY_PREFIX = "streamserve stream ready:"


@dataclass(frozen=True)
class ReadRecord:
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: dict[str, bytes] = field(default_factory=dict)

    def json(self) -> Any:
        return json.loads(self.value or b"null")


class StreamProcess:
    """``streamserve stream ARGS`` in a child process; stdout+stderr go to ``log_path``."""

    def __init__(self, args: Sequence[str], log_path: Path, env: dict[str, str] | None = None):
        self.args = list(args)
        self.log_path = Path(log_path)
        self.env = {**os.environ, **(env or {})}
        self.process: subprocess.Popen[bytes] | None = None
        self.ready_info: dict[str, str] = {}
        self._ready = threading.Event()
        self._reader: threading.Thread | None = None

    def start(self) -> StreamProcess:
        command = [sys.executable, "-m", "streamserve", "stream", *self.args]
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in _pump
        self._ready.clear()
        self.process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=self.env
        )
        self._reader = threading.Thread(target=self._pump, daemon=True)
        self._reader.start()
        return self

    def _pump(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        with self._log:
            for line in self.process.stdout:
                self._log.write(line)
                self._log.flush()
                text = line.decode("utf-8", "replace").strip()
                if text.startswith(READY_PREFIX):
                    fields = text[len(READY_PREFIX) :].split()
                    self.ready_info = dict(part.split("=", 1) for part in fields if "=" in part)
                    self._ready.set()

    def wait_ready(self, timeout: float = 60.0) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        while not self._ready.wait(0.1):
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(
                    f"stream process exited ({self.process.returncode}):\n" + self.log_tail()
                )
            if time.monotonic() > deadline:
                raise TimeoutError("stream process not ready:\n" + self.log_tail())
        return self.ready_info

    @property
    def metrics_port(self) -> int:
        return int(self.ready_info["metrics_port"])

    def metrics_text(self) -> str:
        import httpx

        return httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).text

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float:
        """Sum of the samples of ``name`` whose labels include ``labels``."""
        return metric_value(self.metrics_text(), name, labels)

    def signal(self, signum: int) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signum)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        self.wait(30)

    def wait(self, timeout: float) -> int:
        assert self.process is not None
        code = self.process.wait(timeout)
        if self._reader is not None:
            self._reader.join(5)
        return code

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, then SIGKILL if it does not exit in time; returns the exit code."""
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        self.signal(signal.SIGTERM)
        try:
            return self.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return None

    def log_tail(self, lines: int = 60) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def __enter__(self) -> StreamProcess:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def metric_value(text: str, name: str, labels: dict[str, str] | None = None) -> float:
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name) or line.startswith("#"):
            continue
        series, _, value = line.rpartition(" ")
        metric, _, label_text = series.partition("{")
        if metric != name:
            continue
        found = dict(
            part.split("=", 1) for part in label_text.rstrip("}").split(",") if "=" in part
        )
        found = {key: val.strip('"') for key, val in found.items()}
        if all(found.get(key) == val for key, val in (labels or {}).items()):
            total += float(value)
    return total


def produce(
    bootstrap_servers: str,
    topic: str,
    records: Iterable[tuple[int | None, bytes | None, bytes | None]],
    headers: list[tuple[str, bytes]] | None = None,
) -> int:
    """Produce ``(partition, key, value)`` tuples (idempotent producer); return the count."""
    from confluent_kafka import Producer

    producer = Producer(
        {"bootstrap.servers": bootstrap_servers, "enable.idempotence": True, "linger.ms": 5}
    )
    count = 0
    for partition, key, value in records:
        kwargs: dict[str, Any] = {"headers": headers} if headers else {}
        if partition is not None:
            kwargs["partition"] = partition
        while True:
            try:
                producer.produce(topic, value, key, **kwargs)
                break
            except BufferError:
                producer.poll(0.1)
        count += 1
    if producer.flush(30) != 0:
        raise RuntimeError("records not delivered within 30 s")
    return count


def read_topic(
    bootstrap_servers: str,
    topic: str,
    min_count: int,
    timeout: float = 60.0,
    quiet_s: float = 1.5,
    read_committed: bool = True,
) -> list[ReadRecord]:
    """Every record of ``topic`` from the start: at least ``min_count`` unless ``timeout``
    passes, then on until nothing new arrives for ``quiet_s`` (to catch duplicates)."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    from streamserve.stream.processor import input_record

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap_servers,
            "group.id": f"reader-{time.monotonic_ns()}",
            "enable.auto.commit": False,
            "isolation.level": "read_committed" if read_committed else "read_uncommitted",
        }
    )
    try:
        metadata = consumer.list_topics(topic, timeout=10).topics[topic]
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in metadata.partitions])
        found: list[ReadRecord] = []
        deadline = time.monotonic() + timeout
        last_new = time.monotonic()
        while time.monotonic() < deadline:
            if len(found) >= min_count and time.monotonic() - last_new > quiet_s:
                break
            for message in consumer.consume(1000, 0.2):
                if message.error():
                    continue
                record = input_record(message)
                found.append(
                    ReadRecord(
                        record.partition,
                        record.offset,
                        record.key,
                        record.value,
                        {k: v for k, v in record.headers if v is not None},
                    )
                )
                last_new = time.monotonic()
        return found
    finally:
        consumer.close()


# --------------------------------------------------------------------------- models

IMAGE_PROCESSING = {
    "signatures": {
        "serving_default": {
            "image_input": {
                "name": "images",
                "model_input": "input",
                "resize_short": 32,
                "crop": 32,
                "mean": [127.0, 127.0, 127.0],
                "std": [128.0, 128.0, 128.0],
                "layout": "NCHW",
                "color": "RGB",
                "max_pixels": 40_000_000,
                "max_bytes": 20_000_000,
            },
            "topk_output": {
                "model_output": "logits",
                "k": 2,
                "softmax": True,
                "labels_file": "labels.txt",
                "classes_name": "classes",
                "scores_name": "scores",
            },
        },
    },
    "raw_signature_name": "tensor",
}
COLOR_LABELS = ("red", "green", "blue")


def build_image_classifier(version_dir: Path) -> Path:
    """A colour classifier: mean R, G, B of a 32x32 crop → logits for red/green/blue.

    Deterministic and meaningful: a red image is classified ``red`` with the top score.
    """
    from onnx import TensorProto, checker, helper, numpy_helper

    weight = np.eye(3, dtype=np.float32) * 10.0
    graph = helper.make_graph(
        [
            helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
            helper.make_node("Flatten", ["pooled"], ["flat"]),
            helper.make_node("MatMul", ["flat", "W"], ["logits"]),
        ],
        "colors",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 32, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])],
        initializer=[numpy_helper.from_array(weight, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    checker.check_model(model)
    version_dir.mkdir(parents=True, exist_ok=True)
    (version_dir / "model.onnx").write_bytes(model.SerializeToString())
    (version_dir / "processing.json").write_text(json.dumps(IMAGE_PROCESSING, indent=2))
    (version_dir / "labels.txt").write_text("\n".join(COLOR_LABELS) + "\n")
    return version_dir


def image_bytes(
    color: tuple[int, int, int], size: tuple[int, int] = (48, 40), image_format: str = "PNG"
) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format=image_format)
    return buffer.getvalue()


# --------------------------------------------------------------------------- model server


class ServeProcess:
    """``streamserve serve`` for one model on fixed ports (so it can be restarted in place)."""

    def __init__(self, model_name: str, base_path: Path, log_path: Path) -> None:
        self.model_name, self.base_path, self.log_path = model_name, Path(base_path), log_path
        self.grpc_port, self.rest_port = restartable_port(), restartable_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def grpc_target(self) -> str:
        return f"grpc://127.0.0.1:{self.grpc_port}"

    @property
    def rest_target(self) -> str:
        return f"http://127.0.0.1:{self.rest_port}"

    def start(self, timeout: float = 60.0) -> ServeProcess:
        """Start and wait for the readiness line (bounded by ``timeout``)."""
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "streamserve",
                    "serve",
                    f"--port={self.grpc_port}",
                    f"--rest_api_port={self.rest_port}",
                    f"--model_name={self.model_name}",
                    f"--model_base_path={self.base_path}",
                ],
                stdout=subprocess.PIPE,
                stderr=log,
            )
        ready = threading.Event()
        threading.Thread(target=self._await_ready, args=(ready,), daemon=True).start()
        if not ready.wait(timeout):
            self.kill()
            raise TimeoutError(f"model server not ready in {timeout} s: {self.log_path}")
        return self

    def _await_ready(self, ready: threading.Event) -> None:
        assert self.process is not None and self.process.stdout is not None
        for line in self.process.stdout:
            if b"serving gRPC" in line:
                ready.set()

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()

    def __enter__(self) -> ServeProcess:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
