"""Shared fixtures: one real Kafka broker for the whole run, and fresh topics on it.

The broker starts only when a test asks for ``kafka_bootstrap`` (unit tests never do).
Set STREAMSERVE_KAFKA_BOOTSTRAP=host:port to reuse a running broker instead, e.g. one from
``streamserve kafka start``.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Callable, Iterator

import pytest


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    existing = os.environ.get("STREAMSERVE_KAFKA_BOOTSTRAP")
    if existing:
        yield existing
        return
    from streamserve.kafka import LocalKafka

    with LocalKafka() as kafka:
        print(
            f"\nKafka {kafka.version} at {kafka.bootstrap_servers}, "
            f"started in {kafka.startup_seconds:.1f} s"
        )
        yield kafka.bootstrap_servers


@pytest.fixture
def topic_factory(kafka_bootstrap: str) -> Iterator[Callable[..., str]]:
    """``make(partitions=1, prefix="t") -> name``: a new, uniquely named, ready topic."""
    from streamserve.kafka import admin

    created: list[str] = []

    def make(partitions: int = 1, prefix: str = "t") -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:10]}"
        admin.create_topic(kafka_bootstrap, name, partitions)
        created.append(name)
        return name

    yield make
    for name in created:
        # Best effort: a failed clean-up must not fail the test.
        with contextlib.suppress(Exception):
            admin.delete_topic(kafka_bootstrap, name, timeout=10)
