"""Ordering and offset bookkeeping (PartitionBook) and micro-batching, without Kafka."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from streamserve.stream.batcher import Chunk, MicroBatcher, batch_key
from streamserve.stream.codecs import DecodedRecord, InputRecord
from streamserve.stream.errors import RecordError
from streamserve.stream.pipeline import PartitionBook, Work


def rec(partition: int, offset: int, topic: str = "in") -> InputRecord:
    return InputRecord(topic, partition, offset, None, b"v")


def test_outputs_leave_in_offset_order_per_partition() -> None:
    book = PartitionBook()
    book.assign([("in", 0), ("in", 1)])
    a0, a1, a2 = (book.intake(rec(0, o)) for o in (10, 11, 12))
    b0 = book.intake(rec(1, 5))
    assert book.buffered == 4
    a2.succeed(b"c", "embedded")
    a1.fail(RecordError("decode", "bad"))
    b0.succeed(b"x", "embedded")
    assert [w.record.position for w in book.pop_ready()] == ["in[1]@5"]  # a0 still blocks
    a0.succeed(b"a", "embedded")
    assert [w.record.offset for w in book.pop_ready()] == [10, 11, 12]
    assert book.offsets_to_commit() == {("in", 0): 13, ("in", 1): 6}
    book.mark_committed({("in", 0): 13, ("in", 1): 6})
    assert book.offsets_to_commit() == {} and book.buffered == 0


def test_commit_never_covers_an_unfinished_record() -> None:
    book = PartitionBook()
    book.assign([("in", 0)])
    first, second = book.intake(rec(0, 0)), book.intake(rec(0, 1))
    second.succeed(b"x", "embedded")
    assert list(book.pop_ready()) == [] and book.offsets_to_commit() == {}
    first.succeed(b"y", "embedded")
    list(book.pop_ready())
    assert book.offsets_to_commit() == {("in", 0): 2}


def test_rewind_drops_uncommitted_work_and_gates_intake_until_the_seek() -> None:
    book = PartitionBook()
    book.assign([("in", 0)])
    for offset in (100, 101, 102):
        book.intake(rec(0, offset)).succeed(b"x", "embedded")
    list(book.pop_ready())
    book.mark_committed(book.offsets_to_commit())  # committed up to 103
    late = book.intake(rec(0, 103))
    book.intake(rec(0, 104)).succeed(b"x", "embedded")
    rewound = book.rewind_all()
    assert [s.seek_to for s in rewound] == [103] and late.stale and book.buffered == 0
    assert book.intake(rec(0, 105)) is None  # fetched before the seek: ignored
    assert book.seeks_due()[0].seek_to == 103
    book.seeks_due()[0].seek_to = None  # the consumer seeked
    again = book.intake(rec(0, 103))
    assert again is not None and not again.stale


def test_rewind_before_any_commit_goes_back_to_the_first_record_seen() -> None:
    book = PartitionBook()
    book.assign([("in", 0), ("in", 1)])
    book.intake(rec(0, 40))
    rewound = book.rewind_all()
    assert [(s.partition, s.seek_to) for s in rewound] == [(0, 40)]  # partition 1: untouched


def test_removed_partitions_make_their_work_stale_and_duplicates_are_ignored() -> None:
    book = PartitionBook()
    book.assign([("in", 0)])
    work = book.intake(rec(0, 7))
    assert book.intake(rec(0, 7)) is None and book.intake(rec(0, 3)) is None
    assert book.intake(rec(5, 0)) is None  # not ours
    book.remove([("in", 0)])
    assert work.stale and book.buffered == 0 and len(book) == 0
    assert book.offsets_to_commit() == {}


# --------------------------------------------------------------------------- batching


def decoded_work(book: PartitionBook, offset: int, shape=(1, 4), dtype=np.float32) -> Work:
    work = book.intake(rec(0, offset))
    assert work is not None
    work.decoded = DecodedRecord(offset, None, {"x": np.zeros(shape, dtype)})
    return work


def run_batcher(works: list[Work], max_size: int, delay_s: float) -> list[list[int]]:
    async def scenario() -> list[list[int]]:
        queue: asyncio.Queue[Chunk] = asyncio.Queue()
        batches: list[list[int]] = []
        all_emitted = asyncio.Event()

        async def emit(batch: list[Chunk]) -> None:
            batches.append([w.record.offset for chunk in batch for w in chunk.works])
            if sum(map(len, batches)) == len(works):
                all_emitted.set()

        for work in works:
            queue.put_nowait(Chunk.of_works([work]))
        task = asyncio.create_task(MicroBatcher(queue, emit, max_size, delay_s).run())
        await asyncio.wait_for(all_emitted.wait(), timeout=10)
        task.cancel()
        return batches

    return asyncio.run(scenario())


def test_batcher_splits_by_size_and_by_compatible_shapes() -> None:
    book = PartitionBook()
    book.assign([("in", 0)])
    works = [decoded_work(book, i) for i in range(5)]
    works.append(decoded_work(book, 5, shape=(1, 8)))  # another trailing shape
    works.append(decoded_work(book, 6, shape=(3, 4)))  # 3 rows
    assert batch_key(works[0]) != batch_key(works[5])
    batches = run_batcher(works, max_size=4, delay_s=0.01)
    assert batches[0] == [0, 1, 2, 3]
    assert sorted(map(sorted, batches[1:])) == [[4, 6], [5]]


def test_batcher_emits_a_partial_batch_after_the_delay() -> None:
    book = PartitionBook()
    book.assign([("in", 0)])
    assert run_batcher([decoded_work(book, 0)], max_size=32, delay_s=0.02) == [[0]]
    with pytest.raises(ValueError):
        MicroBatcher(asyncio.Queue(), lambda b: None, 0, 0.0)  # type: ignore[arg-type]
