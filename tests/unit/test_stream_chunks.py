"""The batch-at-a-time path without Kafka: chunks split and merged by rows, stale works
dropped from a chunk, one encode call per batch giving the same bytes as ``encode``, and
the end-to-end latency histogram updated once per batch with the same buckets."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import numpy as np
import orjson
import pytest
from prometheus_client import CollectorRegistry, Histogram

from streamserve.stream.batcher import Chunk, MicroBatcher, merge
from streamserve.stream.codecs import (
    DecodedRecord,
    InputRecord,
    TensorJsonCodec,
    batch_encoder,
    encode_each,
)
from streamserve.stream.errors import RecordError
from streamserve.stream.output import observe_all
from streamserve.stream.pipeline import PartitionBook, Work


def stacked_chunk(book: PartitionBook, partition: int, offsets: range, rows: int = 1) -> Chunk:
    works: list[Work] = []
    for offset in offsets:
        work = book.intake(InputRecord("in", partition, offset, None, b"v"))
        assert work is not None
        work.decoded = DecodedRecord(offset, None, {"x": np.full((rows, 2), offset, np.float32)})
        works.append(work)
    inputs = {"x": np.concatenate([w.decoded.inputs["x"] for w in works if w.decoded])}
    return Chunk.of(works, inputs, [rows] * len(works))


def test_a_chunk_is_split_at_record_boundaries_by_rows() -> None:
    book = PartitionBook()
    book.assign([("in", 0)])
    chunk = stacked_chunk(book, 0, range(5), rows=2)
    head, tail = chunk.split(3)  # whole records: two of them hold 4 rows
    assert [w.record.offset for w in head.works] == [0, 1] and head.rows == 4
    assert tail is not None and [w.record.offset for w in tail.works] == [2, 3, 4]
    assert tail.inputs["x"][:, 0].tolist() == [2, 2, 3, 3, 4, 4] and tail.rows == 6
    whole, rest = chunk.split(100)
    assert whole is chunk and rest is None


def test_the_batcher_cuts_one_large_chunk_into_full_batches_and_merges_small_ones() -> None:
    book = PartitionBook()
    book.assign([("in", 0), ("in", 1)])
    chunks = [stacked_chunk(book, 0, range(10)), stacked_chunk(book, 1, range(3))]

    async def scenario() -> list[list[tuple[int, int]]]:
        queue: asyncio.Queue[Chunk] = asyncio.Queue()
        batches: list[list[tuple[int, int]]] = []
        done = asyncio.Event()

        async def emit(batch: list[Chunk]) -> None:
            merged = merge(batch)
            assert merged.inputs["x"].shape[0] == sum(merged.counts) == len(merged.works)
            batches.append([(w.record.partition, w.record.offset) for w in merged.works])
            if sum(map(len, batches)) == 13:
                done.set()

        for chunk in chunks:
            queue.put_nowait(chunk)
        task = asyncio.create_task(MicroBatcher(queue, emit, 4, 0.01).run())
        await asyncio.wait_for(done.wait(), timeout=10)
        task.cancel()
        return batches

    batches = asyncio.run(scenario())
    assert [len(batch) for batch in batches] == [4, 4, 4, 1]
    assert batches[2] == [(0, 8), (0, 9), (1, 0), (1, 1)]  # a batch spans two chunks


def test_stale_works_leave_a_chunk_with_their_rows() -> None:
    book = PartitionBook()
    book.assign([("in", 0), ("in", 1)])
    first, second = stacked_chunk(book, 0, range(2)), stacked_chunk(book, 1, range(5, 7))
    merged = merge([first, second])
    mixed = Chunk.of(merged.works, merged.inputs, merged.counts)
    book.remove([("in", 0)])  # revoked: its works are stale
    live = mixed.live()
    assert live is not None and [w.record.offset for w in live.works] == [5, 6]
    assert live.inputs["x"][:, 0].tolist() == [5, 6]
    book.remove([("in", 1)])
    assert mixed.live() is None


OUTPUTS = {
    "floats": {"y": np.arange(12, dtype=np.float32).reshape(6, 2) / 7},
    "three dims": {"y": np.arange(24, dtype=np.float64).reshape(6, 2, 2), "n": np.arange(6)},
    "flat": {"classes": np.array([1, 2, 3, 4, 5, 6]), "ok": np.ones(6, dtype=bool)},
    "nan": {"y": np.array([[np.nan], [1.0], [np.inf], [2.0], [3.0], [4.0]], np.float32)},
    "strings": {"label": np.array([b"a", b"b", b"c", b"d", b"e", b"f"], dtype=object)},
}


@pytest.mark.parametrize("outputs", OUTPUTS.values(), ids=OUTPUTS.keys())
def test_encode_batch_writes_what_encode_writes(outputs: Mapping[str, np.ndarray]) -> None:
    codec = TensorJsonCodec()
    decoded = [DecodedRecord(i, None, {}) for i in (1, "two", 3.5)] + [
        DecodedRecord(None, None, {})
    ]
    counts = [1, 2, 1, 2]
    latencies = [0.1234, 5.0, 1e-5, 3.33333]
    batch = codec.encode_batch(decoded, outputs, counts, "tiny", 3, latencies, "embedded")
    alone = encode_each(codec, decoded, outputs, counts, "tiny", 3, latencies, "embedded")
    assert batch == alone
    assert orjson.loads(batch[1])["outputs"].keys() == outputs.keys()


@pytest.mark.parametrize("ids", [[1, 2, 3, 4], [1, 2**70, 3, -4]], ids=["ints", "huge int"])
def test_encode_batch_writes_what_encode_writes_for_integer_ids(ids: list[int]) -> None:
    codec = TensorJsonCodec()
    outputs = OUTPUTS["floats"]
    decoded = [DecodedRecord(i, None, {}) for i in ids]
    counts, latencies = [1, 2, 1, 2], [0.5, 1.0, 2.25, 1e-4]
    batch = codec.encode_batch(decoded, outputs, counts, "tiny", 3, latencies, "embedded")
    alone = encode_each(codec, decoded, outputs, counts, "tiny", 3, latencies, "embedded")
    assert [repr(item) for item in batch] == [repr(item) for item in alone]


def test_a_codec_without_encode_batch_is_encoded_record_by_record() -> None:
    class Plain:
        signature_name = None

        async def decode(self, record: InputRecord) -> DecodedRecord:
            raise NotImplementedError

        def encode(self, decoded, rows, model_name, version, latency_ms, mode):  # type: ignore[no-untyped-def]
            if decoded.id == "bad":
                raise ValueError("cannot")
            return f"{decoded.id}:{rows['y'].tolist()}".encode()

    encode = batch_encoder(Plain())
    decoded = [DecodedRecord(i, None, {}) for i in ("a", "bad", "c")]
    out = encode(decoded, {"y": np.arange(3)}, [1, 1, 1], "m", 1, [0.0] * 3, "embedded")
    assert out[0] == b"a:[0]" and out[2] == b"c:[2]"
    assert isinstance(out[1], RecordError) and out[1].stage == "encode"


def test_observe_all_fills_the_buckets_observe_would() -> None:
    values = [0.0, 0.001, 0.005, 0.0051, 0.3, 2.5, 1000.0]
    one_by_one, at_once = (
        Histogram("h", "h", buckets=(0.005, 0.1, 2.5), registry=CollectorRegistry())
        for _ in range(2)
    )
    for value in values:
        one_by_one.observe(value)
    observe_all(at_once, values)
    assert list(at_once.collect()[0].samples)[:-1] == list(one_by_one.collect()[0].samples)[:-1]
