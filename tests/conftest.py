"""Shared fixtures: one real Kafka broker for the whole run, and fresh topics on it; one real
Schema Registry for the whole run.

The broker starts only when a test asks for ``kafka_bootstrap`` (unit tests never do).
Set STREAMSERVE_KAFKA_BOOTSTRAP=host:port to reuse a running broker instead, e.g. one from
``streamserve kafka start``. Likewise the registry (Apicurio, ``schema_registry_url``) starts
only when asked for; STREAMSERVE_SCHEMA_REGISTRY=URL reuses a running one, e.g. from
``streamserve kafka start --schema-registry``.
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


@pytest.fixture(scope="session")
def schema_registry_url() -> Iterator[str]:
    """The Confluent-compatible API's URL (``schema.registry.url``), e.g.
    ``http://127.0.0.1:PORT/apis/ccompat/v7``; schemas registered by one test stay for the
    next, so use unique subjects."""
    from streamserve.testing import schema_registry

    with schema_registry() as url:
        yield url


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
