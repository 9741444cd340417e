"""The stream processor: Kafka topic → model (embedded or remote) → Kafka topic.

Python API (the same pieces as ``streamserve stream``)::

    from streamserve.stream import ProcessorConfig, StreamProcessor, TensorJsonCodec

    processor = StreamProcessor(
        ProcessorConfig(bootstrap_servers="localhost:9092", input_topic="in",
                        output_topic="out", group_id="g", instance_id="pod-0"),
        predictor, TensorJsonCodec())          # any streamserve.predictors Predictor
    await processor.run()                      # processor.stop() from a signal handler

Bring your own record format with :class:`CallableCodec` (two functions) or any object
implementing :class:`RecordCodec`. Names load lazily so ``streamserve --help`` stays fast.
"""

from __future__ import annotations

import importlib
from typing import Any

_HOMES = {
    "StreamProcessor": "streamserve.stream.processor",
    "ProcessorConfig": "streamserve.stream.processor",
    "RecordCodec": "streamserve.stream.codecs",
    "InputRecord": "streamserve.stream.codecs",
    "DecodedRecord": "streamserve.stream.codecs",
    "TensorJsonCodec": "streamserve.stream.codecs",
    "ImageCodec": "streamserve.stream.codecs",
    "CallableCodec": "streamserve.stream.codecs",
    "OutputRecord": "streamserve.stream.codecs",
    "RecordError": "streamserve.stream.errors",
    "BreakerPolicy": "streamserve.stream.breaker",
    "RetryPolicy": "streamserve.stream.invoker",
    "StreamMetrics": "streamserve.stream.telemetry",
    "FetchPolicy": "streamserve.stream.fetch",
    "ImageFetcher": "streamserve.stream.fetch",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_HOMES[name]), name)
