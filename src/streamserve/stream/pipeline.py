"""Bookkeeping that keeps outputs in order and offsets honest, free of any Kafka client.

Every consumed record becomes a :class:`Work` queued on its partition's
:class:`PartitionState`. Works finish in any order (decoding and model calls run
concurrently), but :meth:`PartitionBook.pop_ready` releases them strictly in offset
order per partition, stopping at the first unfinished one. A record counts as *handled*
once its output (or DLQ record) has been handed to the producer; the offset to commit
for a partition is the one after its last handled record, so a commit never covers a
record whose output was not produced.

Rewinds (after an aborted transaction or a failed delivery) and revocations drop queued
works by bumping the partition's ``epoch``: a work from an older epoch is *stale*, and
every stage skips it. A rewound partition ignores consumed records until the consumer
has seeked back (``seek_to``), so nothing fetched before the seek slips through.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from streamserve.stream.codecs import DecodedRecord, Encoded, InputRecord
from streamserve.stream.errors import RecordError

TopicPartitionKey = tuple[str, int]


@dataclass(eq=False, slots=True)
class Work:
    """One record on its way through the pipeline."""

    record: InputRecord
    state: PartitionState
    epoch: int
    received: float = field(default_factory=time.perf_counter)
    decoded: DecodedRecord | None = None
    output: Encoded | None = None
    error: RecordError | None = None
    mode: str = ""
    model_name: str = ""  # "" when not known: the output gets no streamserve.model.* headers
    model_version: int = 0
    finished: bool = False

    @property
    def stale(self) -> bool:
        return self.epoch != self.state.epoch or self.state.removed

    def succeed(
        self, output: Encoded, mode: str, model_name: str = "", model_version: int = 0
    ) -> None:
        self.output, self.mode, self.finished = output, mode, True
        self.model_name, self.model_version = model_name, model_version

    def fail(self, error: RecordError) -> None:
        self.error, self.finished = error, True


@dataclass(eq=False)
class PartitionState:
    topic: str
    partition: int
    epoch: int = 0
    removed: bool = False
    pending: deque[Work] = field(default_factory=deque)
    next_offset: int | None = None  # next offset expected from the consumer
    handled_next: int | None = None  # offset after the last handled (produced) record
    committed_next: int | None = None  # offset after the last committed record / start
    seek_to: int | None = None  # rewind requested, consumer must seek here first

    @property
    def key(self) -> TopicPartitionKey:
        return (self.topic, self.partition)

    def uncommitted(self) -> int | None:
        """Offset to commit now, or None when nothing new was handled."""
        if self.handled_next is None or self.handled_next == self.committed_next:
            return None
        return self.handled_next


class PartitionBook:
    """All partitions this processor owns now, and the works queued on them."""

    def __init__(self) -> None:
        self._states: dict[TopicPartitionKey, PartitionState] = {}
        self.buffered = 0  # works queued on live partitions

    def __len__(self) -> int:
        return len(self._states)

    def __iter__(self) -> Iterator[PartitionState]:
        return iter(list(self._states.values()))

    def get(self, key: TopicPartitionKey) -> PartitionState | None:
        return self._states.get(key)

    # ------------------------------------------------------------------ assignment

    def assign(self, keys: Iterable[TopicPartitionKey]) -> None:
        for topic, partition in keys:
            if (topic, partition) not in self._states:
                self._states[(topic, partition)] = PartitionState(topic, partition)

    def remove(self, keys: Iterable[TopicPartitionKey]) -> list[PartitionState]:
        """Forget partitions (revoked or lost); their queued works become stale."""
        removed = []
        for key in keys:
            state = self._states.pop(key, None)
            if state is not None:
                state.removed = True
                state.epoch += 1
                self.buffered -= len(state.pending)
                state.pending.clear()
                removed.append(state)
        return removed

    # ------------------------------------------------------------------ flow

    def intake(self, record: InputRecord, received: float | None = None) -> Work | None:
        """Queue a consumed record; None when it must be ignored (see module docstring).
        ``received``: when it was consumed (``time.perf_counter()``; default: now)."""
        state = self._states.get((record.topic, record.partition))
        if state is None or state.seek_to is not None:
            return None
        if state.next_offset is not None and record.offset < state.next_offset:
            return None  # delivered twice (e.g. around a pause); already queued or handled
        if state.committed_next is None:
            state.committed_next = record.offset  # where this assignment started
        state.next_offset = record.offset + 1
        work = Work(
            record, state, state.epoch, time.perf_counter() if received is None else received
        )
        state.pending.append(work)
        self.buffered += 1
        return work

    def pop_ready(self) -> Iterator[Work]:
        """Finished works in offset order per partition; marks each as handled."""
        for state in list(self._states.values()):
            while state.pending and state.pending[0].finished:
                work = state.pending.popleft()
                self.buffered -= 1
                state.handled_next = work.record.offset + 1
                yield work

    def has_ready(self) -> bool:
        return any(s.pending and s.pending[0].finished for s in self._states.values())

    # ------------------------------------------------------------------ commits

    def offsets_to_commit(self) -> dict[TopicPartitionKey, int]:
        return {
            state.key: offset
            for state in self._states.values()
            if (offset := state.uncommitted()) is not None
        }

    def mark_committed(self, offsets: dict[TopicPartitionKey, int]) -> None:
        for key, offset in offsets.items():
            state = self._states.get(key)
            if state is not None:
                state.committed_next = offset

    def rewind_all(self) -> list[PartitionState]:
        """Drop everything not committed; each partition will re-read from its last commit."""
        rewound = []
        for state in self._states.values():
            if state.committed_next is None:
                continue  # nothing consumed since assignment: the position is already right
            state.epoch += 1
            self.buffered -= len(state.pending)
            state.pending.clear()
            state.handled_next = state.committed_next
            state.next_offset = state.committed_next
            state.seek_to = state.committed_next
            rewound.append(state)
        return rewound

    def seeks_due(self) -> list[PartitionState]:
        return [state for state in self._states.values() if state.seek_to is not None]
