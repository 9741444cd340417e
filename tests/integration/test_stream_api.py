"""The Python API: StreamProcessor in-process with the user's own decode/encode functions."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from streamserve.stream import (
    CallableCodec,
    DecodedRecord,
    InputRecord,
    ProcessorConfig,
    RecordError,
    StreamProcessor,
)
from streamserve.testing import produce, read_topic

pytestmark = pytest.mark.integration


async def decode_csv(record: InputRecord) -> DecodedRecord:
    """``"id,x1,x2,x3,x4"`` → one row of the 4-wide tiny model."""
    text = (record.value or b"").decode()
    record_id, *numbers = text.split(",")
    if len(numbers) != 4:
        raise RecordError("decode", f"expected 4 numbers, got {len(numbers)}")
    return DecodedRecord(record_id, None, {"x": np.array([numbers], dtype=np.float32)})


def encode_sum(
    decoded: DecodedRecord, rows, model: str, version: int, latency_ms: float, mode: str
) -> bytes:
    return f"{decoded.id}:{float(rows['y'].sum()):.4f}:{mode}".encode()


@pytest.mark.parametrize("guarantee", ["exactly-once", "at-least-once"])
def test_python_api_with_custom_codec(
    guarantee: str, kafka_bootstrap: str, topic_factory, tmp_path: Path
) -> None:
    from streamserve.models.toy import build_tiny
    from streamserve.predictors.factory import create_embedded_predictor

    build_tiny(tmp_path / "tiny" / "1", width=4)
    source, sink = topic_factory(2, "api-in"), topic_factory(2, "api-out")
    produce(
        kafka_bootstrap,
        source,
        [(i % 2, None, f"r{i},1,2,3,{i}".encode()) for i in range(200)] + [(0, None, b"broken")],
    )

    async def scenario() -> tuple[list, StreamProcessor]:
        predictor = create_embedded_predictor(tmp_path / "tiny", "tiny")
        config = ProcessorConfig(
            kafka_bootstrap, source, sink, f"g-{source}", guarantee=guarantee, instance_id="api"
        )
        processor = StreamProcessor(config, predictor, CallableCodec(decode_csv, encode_sum))
        running = asyncio.create_task(processor.run())
        outputs = await asyncio.to_thread(read_topic, kafka_bootstrap, sink, 200, 60)
        processor.stop()
        await running
        await predictor.close()
        return outputs, processor

    outputs, processor = asyncio.run(scenario())
    values = sorted(o.value.decode() for o in outputs)
    assert len(values) == 200 and all(v.endswith(":embedded") for v in values)
    metrics = processor.metrics
    assert metrics.records_dlq.labels("decode")._value.get() == 1
    assert metrics.records_in.labels(source)._value.get() == 201
    samples = {s.name: s for m in metrics.registry.collect() for s in m.samples}
    assert samples["streamserve_stream_end_to_end_latency_seconds_count"].value == 201
    lags = [
        s
        for m in metrics.registry.collect()
        for s in m.samples
        if s.name == "streamserve_stream_consumer_lag"
    ]
    assert {s.labels["partition"] for s in lags} == {"0", "1"}
