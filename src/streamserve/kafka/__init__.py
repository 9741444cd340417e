"""A real Apache Kafka for streamserve: jars from Maven Central, a local KRaft broker, topics.

``LocalKafka`` runs a single-node broker as a child process, ``LocalKafkaCluster`` N of
them as one KRaft cluster (fault tests: kill and restart a node); ``admin`` holds topic helpers
that work against any bootstrap address; ``jars.ensure_jars`` fetches the broker once.
Attributes load lazily so that ``streamserve --help`` does not import confluent-kafka.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from streamserve.kafka.broker import LocalKafka
    from streamserve.kafka.cluster import LocalKafkaCluster
    from streamserve.kafka.jars import KAFKA_VERSION, ensure_jars

__all__ = ["KAFKA_VERSION", "LocalKafka", "LocalKafkaCluster", "ensure_jars"]

_HOMES = {
    "LocalKafka": "streamserve.kafka.broker",
    "LocalKafkaCluster": "streamserve.kafka.cluster",
    "KAFKA_VERSION": "streamserve.kafka.jars",
    "ensure_jars": "streamserve.kafka.jars",
}


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_HOMES[name]), name)
