"""Make sure the processor's topics exist before it starts."""

from __future__ import annotations

from collections.abc import Sequence

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import (  # type: ignore[attr-defined]  # not re-exported in its stubs
    AdminClient,
    NewTopic,
)

from streamserve.errors import NotFound, Unavailable

_TIMEOUT_S = 30.0


def ensure_topics(
    bootstrap_servers: str, input_topic: str, output_topics: Sequence[str], create: bool
) -> dict[str, int]:
    """Partition count per topic. Missing output topics are created (like the input topic's
    partition count, the cluster's default replication factor) when ``create`` is true."""
    admin = AdminClient({"bootstrap.servers": bootstrap_servers})
    counts = _partition_counts(admin)
    if input_topic not in counts:
        raise NotFound(f"input topic {input_topic!r} does not exist on {bootstrap_servers}")
    missing = [name for name in dict.fromkeys(output_topics) if name not in counts]
    if missing and not create:
        raise NotFound(f"topics {missing} do not exist on {bootstrap_servers}")
    if missing:
        _create(admin, missing, counts[input_topic])
        counts = _partition_counts(admin)
    return counts


def _partition_counts(admin: AdminClient) -> dict[str, int]:
    try:
        cluster = admin.list_topics(timeout=_TIMEOUT_S)
    except KafkaException as exc:
        raise Unavailable(f"Kafka did not answer: {exc}") from exc
    return {
        name: len(topic.partitions)
        for name, topic in cluster.topics.items()
        if topic.error is None and topic.partitions
    }


def _create(admin: AdminClient, names: list[str], partitions: int) -> None:
    topics = [NewTopic(name, num_partitions=partitions, replication_factor=-1) for name in names]
    futures = admin.create_topics(topics, operation_timeout=_TIMEOUT_S, request_timeout=_TIMEOUT_S)
    for name, future in futures.items():
        try:
            future.result(timeout=_TIMEOUT_S)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise Unavailable(f"cannot create topic {name!r}: {exc.args[0].str()}") from exc
