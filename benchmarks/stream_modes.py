"""What ``python -m benchmarks stream`` compares: the modes, and the records each mode processes.

Modes (``--modes`` names):

==========================  ==================================================================
``embedded``                the model in the processor's process (streamserve defaults)
``grpc``                    remote TF Serving gRPC, micro-batched and pipelined (defaults)
``rest``                    remote TF Serving REST, micro-batched and pipelined (defaults)
``grpc-blocking``           remote gRPC, batch 1 and 1 call in flight: one blocking call per
                            record, as the classic Kafka Streams example does
``grpc-channel-per-record`` the same, plus a new gRPC channel per record (as the classic
                            example literally does)
``v2-grpc``                 remote KServe V2 gRPC, micro-batched and pipelined (defaults)
``v2-rest``                 remote KServe V2 REST (not in the default set)
==========================  ==================================================================

Records: the tiny model gets TF Serving columnar JSON ``{"id": i, "inputs": {"x": [[64
floats]]}}``; the ImageNet model gets the classic example's record, a plain file path of
one of the sample photos. Keys are unique ids (``str(i)`` with a phase prefix) so the
benchmark can match every output to its input.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from benchmarks.stream_io import BenchRecord


@dataclass(frozen=True)
class Mode:
    name: str
    label: str
    transport: str | None  # "grpc" | "http" | None (embedded)
    protocol: str = "tfserving"
    max_batch_size: int | None = None  # None: the processor's default
    max_in_flight: int | None = None
    per_call_channel: bool = False

    @property
    def remote(self) -> bool:
        return self.transport is not None

    def settings(self) -> dict[str, object]:
        return {
            "transport": self.transport or "in-process",
            "protocol": self.protocol,
            "max_batch_size": self.max_batch_size or "default",
            "max_in_flight": self.max_in_flight or "default",
            "per_call_channel": self.per_call_channel,
        }


MODES: dict[str, Mode] = {
    mode.name: mode
    for mode in (
        Mode("embedded", "embedded", None),
        Mode("grpc", "remote gRPC, batched+pipelined", "grpc"),
        Mode("rest", "remote REST, batched+pipelined", "http"),
        Mode(
            "grpc-blocking",
            "remote gRPC, 1 blocking call/record",
            "grpc",
            max_batch_size=1,
            max_in_flight=1,
        ),
        Mode(
            "grpc-channel-per-record",
            "remote gRPC, new channel/record",
            "grpc",
            max_batch_size=1,
            max_in_flight=1,
            per_call_channel=True,
        ),
        Mode("v2-grpc", "remote V2 gRPC, batched+pipelined", "grpc", protocol="v2"),
        Mode("v2-rest", "remote V2 REST, batched+pipelined", "http", protocol="v2"),
    )
}
DEFAULT_MODES = ("embedded", "grpc", "rest", "grpc-blocking", "grpc-channel-per-record", "v2-grpc")
BASELINE_MODES = frozenset({"grpc-blocking", "grpc-channel-per-record"})


def parse_modes(text: str) -> list[Mode]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in MODES]
    if unknown or not names:
        raise ValueError(f"unknown mode(s) {unknown or text!r}; choose from {', '.join(MODES)}")
    return [MODES[name] for name in dict.fromkeys(names)]


@dataclass
class Workload:
    """One model and the records every mode processes for it."""

    model: str  # "tiny" | "imagenet"
    model_name: str
    base_path: Path
    codec: str  # "tensor" | "image"
    make_records: Callable[[int, int, str], list[BenchRecord]] = field(repr=False)
    image_roots: list[str] = field(default_factory=list)
    input_dtypes: dict[str, str] = field(default_factory=dict)

    def records(self, count: int, partitions: int, prefix: str = "") -> list[BenchRecord]:
        return self.make_records(count, partitions, prefix)


TINY_WIDTH = 64


def tiny_records(count: int, partitions: int, prefix: str = "", seed: int = 0) -> list[BenchRecord]:
    """``{"id": i, "inputs": {"x": [[64 float32]]}}``, round-robin over the partitions."""
    import orjson

    rows = np.random.default_rng(seed).standard_normal((count, TINY_WIDTH)).astype(np.float32)
    option = orjson.OPT_SERIALIZE_NUMPY
    return [
        BenchRecord(
            i % partitions,
            f"{prefix}{i}".encode(),
            orjson.dumps({"id": i, "inputs": {"x": rows[i : i + 1]}}, option=option),
        )
        for i in range(count)
    ]


def image_records(
    paths: Sequence[Path], count: int, partitions: int, prefix: str = ""
) -> list[BenchRecord]:
    """Plain file-path strings (the classic example's record), cycling through ``paths``."""
    return [
        BenchRecord(i % partitions, f"{prefix}{i}".encode(), str(paths[i % len(paths)]).encode())
        for i in range(count)
    ]


def tiny_workload(models_dir: Path) -> Workload:
    from streamserve.models.toy import build_tiny

    base = models_dir / "tiny"
    if not (base / "1" / "model.onnx").exists():
        build_tiny(base / "1", width=TINY_WIDTH)
    return Workload("tiny", "tiny", base, "tensor", tiny_records, input_dtypes={"x": "float32"})


def imagenet_workload(models_dir: Path) -> Workload:
    from streamserve.models.cli import build_model
    from streamserve.models.samples import sample_images

    base = models_dir / "imagenet"
    build_model("imagenet", base)
    paths = [sample.path.resolve() for sample in sample_images()]
    if not paths:
        raise RuntimeError("no sample photos found (scikit-learn is needed)")
    roots = sorted({str(path.parent) for path in paths})

    def make(count: int, partitions: int, prefix: str = "") -> list[BenchRecord]:
        return image_records(paths, count, partitions, prefix)

    return Workload("imagenet", "imagenet", base, "image", make, image_roots=roots)
