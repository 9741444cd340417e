"""Micro-batching: gather decoded chunks into model calls bounded by size and delay.

The unit of work between decoding and the model is a :class:`Chunk`: consecutive works
whose inputs are already stacked along dim 0 (a consumed batch decoded in one call is one
chunk). Chunks whose inputs can be concatenated (same names, dtypes and trailing shapes)
share a batch; a chunk larger than what a batch still takes is split at a record
boundary. A batch closes when it reaches ``max_batch_size`` rows or when
``max_batch_delay_s`` has passed since its first chunk arrived; ``emit`` may block (all
model-call slots busy), and meanwhile chunks pile up for the next, larger batch.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from streamserve.stream.invoker import concat_inputs
from streamserve.stream.pipeline import Work

BatchKey = Hashable


def inputs_key(inputs: Mapping[str, np.ndarray]) -> BatchKey:
    return tuple((name, array.dtype.str, array.shape[1:]) for name, array in sorted(inputs.items()))


def batch_key(work: Work) -> BatchKey:
    assert work.decoded is not None
    return inputs_key(work.decoded.inputs)


@dataclass(eq=False, slots=True)
class Chunk:
    """Decoded works, in order, with their inputs stacked (``counts[i]`` rows for works[i])."""

    works: list[Work]
    inputs: dict[str, np.ndarray]
    counts: list[int]
    key: BatchKey
    rows: int

    @classmethod
    def of(cls, works: list[Work], inputs: dict[str, np.ndarray], counts: list[int]) -> Chunk:
        return cls(works, inputs, counts, inputs_key(inputs), sum(counts))

    @classmethod
    def of_works(cls, works: list[Work]) -> Chunk:
        """From works decoded one by one (each has its own input arrays)."""
        decoded = [work.decoded for work in works if work.decoded is not None]
        assert len(decoded) == len(works), "every work of a chunk is decoded"
        return cls.of(works, concat_inputs(decoded), [record.rows for record in decoded])

    def split(self, rows: int) -> tuple[Chunk, Chunk | None]:
        """The head holding at least ``rows`` rows (whole records), and the rest."""
        taken = total = 0
        for count in self.counts:
            if total >= rows:
                break
            taken += 1
            total += count
        if taken >= len(self.works):
            return self, None
        head = Chunk(
            self.works[:taken],
            {name: array[:total] for name, array in self.inputs.items()},
            self.counts[:taken],
            self.key,
            total,
        )
        tail = Chunk(
            self.works[taken:],
            {name: array[total:] for name, array in self.inputs.items()},
            self.counts[taken:],
            self.key,
            self.rows - total,
        )
        return head, tail

    def live(self) -> Chunk | None:
        """Without its stale works (revoked or rewound partitions); None if none is left."""
        works = [work for work in self.works if not work.stale]
        if len(works) == len(self.works):
            return self
        return Chunk.of_works(works) if works else None


def chunks_of(works: Sequence[Work]) -> Iterator[Chunk]:
    """Works decoded one by one as chunks: runs of consecutive works that stack."""
    run: list[Work] = []
    key: BatchKey = None
    for work in works:
        work_key = batch_key(work)
        if run and work_key != key:
            yield Chunk.of_works(run)
            run = []
        run.append(work)
        key = work_key
    if run:
        yield Chunk.of_works(run)


@dataclass(slots=True)
class MergedBatch:
    """One model call's worth of chunks, as one stacked input."""

    works: list[Work]
    inputs: dict[str, np.ndarray]
    counts: list[int]


def merge(chunks: Sequence[Chunk]) -> MergedBatch:
    if len(chunks) == 1:
        (chunk,) = chunks
        return MergedBatch(chunk.works, chunk.inputs, chunk.counts)
    works: list[Work] = []
    counts: list[int] = []
    for chunk in chunks:
        works += chunk.works
        counts += chunk.counts
    names = chunks[0].inputs.keys()
    inputs = {name: np.concatenate([c.inputs[name] for c in chunks]) for name in names}
    return MergedBatch(works, inputs, counts)


class MicroBatcher:
    def __init__(
        self,
        source: asyncio.Queue[Chunk],
        emit: Callable[[list[Chunk]], Awaitable[None]],
        max_batch_size: int,
        max_batch_delay_s: float,
    ) -> None:
        if max_batch_size < 1 or max_batch_delay_s < 0:
            raise ValueError("max_batch_size must be >= 1 and max_batch_delay_s >= 0")
        self.source = source
        self.emit = emit
        self.max_batch_size = max_batch_size
        self.max_batch_delay_s = max_batch_delay_s

    async def run(self) -> None:
        """Forever: wait for a first chunk, fill batches until the deadline, emit them."""
        loop = asyncio.get_running_loop()
        while True:
            groups: dict[BatchKey, list[Chunk]] = {}
            rows: dict[BatchKey, int] = {}
            chunk: Chunk | None = await self.source.get()
            deadline = loop.time() + self.max_batch_delay_s
            while chunk is not None:
                await self._add(chunk, groups, rows)
                if not groups:
                    break
                chunk = await self._next_before(deadline, loop)
            for group in groups.values():
                await self.emit(group)

    async def _add(
        self, chunk: Chunk, groups: dict[BatchKey, list[Chunk]], rows: dict[BatchKey, int]
    ) -> None:
        """Add ``chunk`` to its group, emitting every batch it fills."""
        key = chunk.key
        rest: Chunk | None = chunk
        while rest is not None:
            head, rest = rest.split(self.max_batch_size - rows.get(key, 0))
            groups.setdefault(key, []).append(head)
            rows[key] = rows.get(key, 0) + head.rows
            if rows[key] >= self.max_batch_size:
                del rows[key]
                await self.emit(groups.pop(key))

    async def _next_before(self, deadline: float, loop: asyncio.AbstractEventLoop) -> Chunk | None:
        try:
            return self.source.get_nowait()
        except asyncio.QueueEmpty:
            pass
        remaining = deadline - loop.time()
        if remaining <= 0:
            return None
        try:
            return await asyncio.wait_for(self.source.get(), remaining)
        except TimeoutError:
            return None
