"""Keys, headers and routing end to end: outputs keep the input key and carry the input's
headers (traceparent included) plus ``streamserve.model.*``; a codec that routes by score
splits the stream over two topics, exactly-once, with no loss and no duplicate
(read_committed). The review topic does not exist before the processor starts."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import pytest

from streamserve.models.toy import build_tiny
from streamserve.predictors.factory import create_embedded_predictor
from streamserve.stream import CallableCodec, DecodedRecord, InputRecord, ProcessorConfig
from streamserve.stream.codecs import OutputRecord
from streamserve.stream.processor import StreamProcessor
from streamserve.testing import ReadRecord, produce, read_topic

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

COUNT = 300
TRACEPARENT = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
HEADERS = [("traceparent", TRACEPARENT), ("tracestate", b"vendor=1"), ("tenant", b"acme")]


def features(index: int) -> np.ndarray:
    return np.array([[index % 7, 1.0, -(index % 5), index % 3]], dtype=np.float32)


async def decode(record: InputRecord) -> DecodedRecord:
    index = int(record.value or b"0")
    return DecodedRecord(index, None, {"x": features(index)})


def router(review_topic: str, threshold: float) -> Callable[..., OutputRecord]:
    def encode(
        decoded: DecodedRecord,
        rows: Mapping[str, np.ndarray],
        model: str,
        version: int,
        latency_ms: float,
        mode: str,
    ) -> OutputRecord:
        score = float(rows["y"].sum())
        value = f"{decoded.id}:{score:.5f}".encode()
        if score < threshold:
            return OutputRecord(
                value, headers=[("review.reason", b"low score")], topic=review_topic
            )
        return OutputRecord(value)

    return encode


def expected_scores(model_dir: Path) -> dict[int, float]:
    async def scores() -> dict[int, float]:
        predictor = create_embedded_predictor(model_dir, "tiny")
        try:
            batch = np.concatenate([features(i) for i in range(COUNT)])
            prediction = await predictor.predict({"x": batch})
            return {i: float(row.sum()) for i, row in enumerate(prediction.outputs["y"])}
        finally:
            await predictor.close()

    return asyncio.run(scores())


def ids_of(records: list[ReadRecord]) -> list[int]:
    return sorted(int((r.value or b"").split(b":")[0]) for r in records)


def test_headers_are_carried_and_a_codec_routes_exactly_once(
    kafka_bootstrap: str, topic_factory: Callable[..., str], tmp_path: Path
) -> None:
    build_tiny(tmp_path / "tiny" / "1", width=4)
    scores = expected_scores(tmp_path / "tiny")
    threshold = float(np.median(list(scores.values())))
    source, sink = topic_factory(2, "route-in"), topic_factory(2, "route-out")
    review = f"{sink}-review"
    records = [(i % 2, f"k{i}".encode(), str(i).encode()) for i in range(COUNT)]
    produce(kafka_bootstrap, source, records, headers=HEADERS)

    async def scenario() -> tuple[list[ReadRecord], list[ReadRecord]]:
        predictor = create_embedded_predictor(tmp_path / "tiny", "tiny")
        config = ProcessorConfig(
            kafka_bootstrap,
            source,
            sink,
            f"g-{source}",
            guarantee="exactly-once",
            instance_id="router",
            header_denylist=["tenant"],
        )
        codec = CallableCodec(decode, router(review, threshold), output_topics=[review])
        processor = StreamProcessor(config, predictor, codec)
        running = asyncio.create_task(processor.run())
        low = sum(score < threshold for score in scores.values())
        kept = await asyncio.to_thread(read_topic, kafka_bootstrap, sink, COUNT - low, 90)
        routed = await asyncio.to_thread(read_topic, kafka_bootstrap, review, low, 90)
        processor.stop()
        await running
        await predictor.close()
        return kept, routed

    kept, routed = asyncio.run(scenario())
    low_ids = sorted(i for i, score in scores.items() if score < threshold)
    high_ids = sorted(i for i, score in scores.items() if score >= threshold)
    assert low_ids and high_ids
    print(f"\nrouting: {len(kept)} kept + {len(routed)} routed of {COUNT} (read_committed)")
    assert ids_of(kept) == high_ids  # no loss, no duplicate, right topic
    assert ids_of(routed) == low_ids
    for record in kept + routed:
        index = int((record.value or b"").split(b":")[0])
        assert record.key == f"k{index}".encode()
        assert record.headers["traceparent"] == TRACEPARENT
        assert record.headers["tracestate"] == b"vendor=1"
        assert "tenant" not in record.headers  # denied
        assert record.headers["streamserve.model.name"] == b"tiny"
        assert record.headers["streamserve.model.version"] == b"1"
        assert record.headers["streamserve.model.mode"] == b"embedded"
    assert all(r.headers["review.reason"] == b"low score" for r in routed)
