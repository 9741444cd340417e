"""Shared fixtures: one real Kafka broker for the whole run, and fresh topics on it.

The broker starts only when a test asks for ``kafka_bootstrap`` (unit tests never do).
Set STREAMSERVE_KAFKA_BOOTSTRAP=host:port to reuse a running broker instead, e.g. one from
``streamserve kafka start``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import pytest


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    from streamserve.testing import kafka_broker

    with kafka_broker() as bootstrap_servers:
        yield bootstrap_servers


@pytest.fixture
def topic_factory(kafka_bootstrap: str) -> Iterator[Callable[..., str]]:
    """``make(partitions=1, prefix="t") -> name``: a new, uniquely named, ready topic."""
    from streamserve.kafka import admin
    from streamserve.testing import unique_topic

    created: list[str] = []

    def make(partitions: int = 1, prefix: str = "t") -> str:
        created.append(unique_topic(kafka_bootstrap, prefix, partitions))
        return created[-1]

    yield make
    for name in created:
        # Best effort: a failed clean-up must not fail the test.
        with contextlib.suppress(Exception):
            admin.delete_topic(kafka_bootstrap, name, timeout=10)
