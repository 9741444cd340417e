"""One stream processor run for ``python -m benchmarks stream``, in its own process.

    python -m benchmarks.stream_worker SPEC.json

The benchmark runs every mode in a child process so that each one's CPU time can be read
from ``/proc`` and no mode shares an interpreter (or a GIL) with the benchmark itself.
The child assembles its processor from the :class:`WorkerSpec` the way ``streamserve
stream`` does (:func:`streamserve.stream.assembly.assemble`), wrapping every predictor in
:class:`TimedPredictor` to time every model call, prints one readiness line, runs until
SIGTERM/SIGINT and then writes the timed calls to ``spec.calls_path`` as JSON.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import sys
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

READY_PREFIX = "bench worker ready:"
LOG_FORMAT = "%(created).3f %(levelname)s %(name)s: %(message)s"


@dataclass
class WorkerSpec:
    """Everything one processor run needs; JSON round-trips through :meth:`save`/:meth:`load`."""

    bootstrap_servers: str
    input_topic: str
    output_topic: str
    group_id: str
    model_name: str
    calls_path: str
    codec: str = "tensor"  # "tensor" | "image"
    model_base_path: str | None = None  # embedded when set
    targets: list[str] = field(default_factory=list)  # remote when set
    protocol: str = "tfserving"
    per_call_channel: bool = False
    max_batch_size: int | None = None  # None: the processor's default
    max_in_flight: int | None = None
    fallback_base_path: str | None = None
    image_roots: list[str] = field(default_factory=list)
    input_dtypes: dict[str, str] = field(default_factory=dict)
    # Kafka security: a properties file and per-role KEY=VALUE flags; secrets stay in the
    # file or the STREAMSERVE_KAFKA_* environment (inherited), never in this spec file
    kafka_config: str | None = None
    kafka_role_flags: dict[str, list[str]] = field(default_factory=dict)
    guarantee: str = "exactly-once"  # or "at-least-once"
    settle_heap: bool = True  # gc settings of ``streamserve stream`` (see settle_heap)

    def save(self, path: Path) -> Path:
        path.write_text(json.dumps(asdict(self), indent=2))
        return path

    @classmethod
    def load(cls, path: Path) -> WorkerSpec:
        return cls(**json.loads(path.read_text()))


class TimedPredictor:
    """A :class:`~streamserve.predictors.base.Predictor` that records each call it forwards:
    ``(wall-clock start in s, duration in s, rows, succeeded)``."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.mode = inner.mode
        self.target = getattr(inner, "target", inner.mode)
        self.calls: list[tuple[float, float, int, bool]] = []

    async def predict(
        self, inputs: Mapping[str, np.ndarray], signature_name: str | None = None
    ) -> Any:
        rows = int(next(iter(inputs.values())).shape[0]) if inputs else 0
        wall, started = time.time(), time.perf_counter()
        ok = False
        try:
            result = await self.inner.predict(inputs, signature_name)
            ok = True
            return result
        finally:
            self.calls.append((wall, time.perf_counter() - started, rows, ok))

    async def close(self) -> None:
        await self.inner.close()


def _pipeline_spec(spec: WorkerSpec) -> Any:
    """The worker's model and codec as the stream CLI would assemble them."""
    from streamserve.predictors.factory import PredictorSpec
    from streamserve.stream.assembly import CodecSpec, PipelineSpec
    from streamserve.stream.fetch import FetchPolicy

    model = PredictorSpec(
        targets=None if spec.model_base_path is not None else spec.targets,
        model_name=spec.model_name,
        protocol=spec.protocol,
        model_base_path=spec.model_base_path,
        per_call_channel=spec.per_call_channel,
    )
    codec = CodecSpec(
        kind=spec.codec,
        input_dtypes=spec.input_dtypes,
        fetch=FetchPolicy(allowed_roots=tuple(spec.image_roots)),
    )
    return PipelineSpec(
        _processor_config(spec), model, codec, fallback_base_path=spec.fallback_base_path
    )


def _processor_config(spec: WorkerSpec) -> Any:
    """The processor's defaults (exactly-once, batching, breaker) unless the spec says so."""
    from streamserve.kafka import client_config
    from streamserve.stream.processor import ProcessorConfig

    overrides = {
        name: value
        for name, value in (
            ("max_batch_size", spec.max_batch_size),
            ("max_in_flight", spec.max_in_flight),
        )
        if value is not None
    }
    kafka = client_config.load(
        config_file=spec.kafka_config,
        bootstrap_servers=spec.bootstrap_servers,
        role_flags=spec.kafka_role_flags,
    )
    return ProcessorConfig(
        bootstrap_servers=spec.bootstrap_servers,
        consumer_overrides=kafka.for_role("consumer"),
        producer_overrides=kafka.for_role("producer"),
        admin_overrides=kafka.for_role("admin"),
        input_topic=spec.input_topic,
        output_topic=spec.output_topic,
        group_id=spec.group_id,
        instance_id=spec.group_id,
        metrics_port=0,
        guarantee=spec.guarantee,
        **overrides,
    )


def _print_ready(info: dict[str, Any]) -> None:
    print(f"{READY_PREFIX} metrics_port={info.get('metrics_port')}", flush=True)


async def run_worker(spec: WorkerSpec) -> None:
    from streamserve.stream.assembly import assemble, settle_heap

    timed: list[TimedPredictor] = []

    def timing(predictor: Any) -> TimedPredictor:
        timed.append(TimedPredictor(predictor))
        return timed[-1]

    async with contextlib.AsyncExitStack() as stack:
        try:
            processor = await assemble(
                _pipeline_spec(spec), stack, wrap=timing, on_ready=_print_ready
            )
            if spec.settle_heap:  # as ``streamserve stream`` does
                settle_heap()
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(signum, processor.stop)
            await processor.run()
        finally:
            _write_calls(Path(spec.calls_path), timed)


def _write_calls(path: Path, timed: list[TimedPredictor]) -> None:
    document = {p.mode: p.calls for p in timed}
    path.write_text(json.dumps(document))


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m benchmarks.stream_worker SPEC.json", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    asyncio.run(run_worker(WorkerSpec.load(Path(args[0]))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
