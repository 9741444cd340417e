"""Micro-batching: gather decoded records into model calls bounded by size and delay.

Records whose inputs can be concatenated along dim 0 (same names, dtypes and trailing
shapes) share a batch. A batch closes when it reaches ``max_batch_size`` rows or when
``max_batch_delay_s`` has passed since its first record arrived; ``emit`` may block
(all model-call slots busy), and meanwhile records pile up for the next, larger batch.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable

from streamserve.stream.pipeline import Work

BatchKey = Hashable


def batch_key(work: Work) -> BatchKey:
    assert work.decoded is not None
    return tuple(
        (name, array.dtype.str, array.shape[1:])
        for name, array in sorted(work.decoded.inputs.items())
    )


class MicroBatcher:
    def __init__(
        self,
        source: asyncio.Queue[Work],
        emit: Callable[[list[Work]], Awaitable[None]],
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
        """Forever: wait for a first record, fill batches until the deadline, emit them."""
        loop = asyncio.get_running_loop()
        while True:
            groups: dict[BatchKey, list[Work]] = {}
            rows: dict[BatchKey, int] = {}
            work: Work | None = await self.source.get()
            deadline = loop.time() + self.max_batch_delay_s
            while work is not None:
                key = batch_key(work)
                groups.setdefault(key, []).append(work)
                rows[key] = rows.get(key, 0) + _rows(work)
                if rows[key] >= self.max_batch_size:
                    await self.emit(groups.pop(key))
                    del rows[key]
                    if not groups:
                        break
                work = await self._next_before(deadline, loop)
            for group in groups.values():
                await self.emit(group)

    async def _next_before(self, deadline: float, loop: asyncio.AbstractEventLoop) -> Work | None:
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


def _rows(work: Work) -> int:
    return work.decoded.rows if work.decoded is not None else 1
