"""ensure_topics waits for created topics to show up in the metadata (start-up race)."""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import pytest

from streamserve.errors import NotFound
from streamserve.stream import topics


@dataclass
class _Partition:
    leader: int = 1


@dataclass
class _Topic:
    partitions: dict[int, _Partition]
    error: Any = None


@dataclass
class _Cluster:
    topics: dict[str, _Topic]


@dataclass
class _LaggingAdmin:
    """A broker whose metadata shows a created topic only after ``lag`` more requests,
    first without a partition leader."""

    existing: dict[str, int]
    lag: int = 3
    created: dict[str, int] = field(default_factory=dict)
    calls_since_create: int = 0

    def list_topics(self, topic: str | None = None, timeout: float = 5.0) -> _Cluster:
        shown = {
            name: _Topic({p: _Partition() for p in range(n)}) for name, n in self.existing.items()
        }
        if self.created:
            self.calls_since_create += 1
            if self.calls_since_create >= self.lag:
                leader = 1 if self.calls_since_create > self.lag else -1
                for name, n in self.created.items():
                    shown[name] = _Topic({p: _Partition(leader) for p in range(n)})
        if topic is not None:
            shown = {name: value for name, value in shown.items() if name == topic}
        return _Cluster(shown)

    def create_topics(self, new_topics: list[Any], **_: Any) -> dict[str, Future[None]]:
        futures: dict[str, Future[None]] = {}
        for new in new_topics:
            self.created[new.topic] = new.num_partitions
            future: Future[None] = Future()
            future.set_result(None)
            futures[new.topic] = future
        return futures


def test_created_topics_are_awaited_in_the_metadata(monkeypatch: pytest.MonkeyPatch) -> None:
    admin = _LaggingAdmin({"in": 4})
    monkeypatch.setattr(topics, "connected_admin", lambda _kafka, _timeout: admin)

    counts = topics.ensure_topics("b:9092", "in", ["out", "in.dlq"], create=True)

    assert counts == {"in": 4, "out": 4, "in.dlq": 4}
    assert admin.calls_since_create > admin.lag  # it did wait for the leaders


def test_missing_input_topic_is_not_found(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(topics, "connected_admin", lambda _kafka, _timeout: _LaggingAdmin({}))
    with pytest.raises(NotFound):
        topics.ensure_topics("b:9092", "in", ["out"], create=True)
