"""Make sure the processor's topics exist before it starts."""

from __future__ import annotations

from collections.abc import Sequence

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import (  # type: ignore[attr-defined]  # not re-exported in its stubs
    AdminClient,
    ClusterMetadata,
    NewTopic,
)

from streamserve.errors import NotFound, Unavailable
from streamserve.waiting import WaitTimeout, wait_until

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
        counts = _wait_for_topics(admin, missing)
    return counts


def _wait_for_topics(admin: AdminClient, names: list[str]) -> dict[str, int]:
    """Metadata lags topic creation: wait until every topic in ``names`` is listed with its
    partitions, each with a leader (reading it at once raced: ``KeyError`` on the name)."""

    def ready() -> dict[str, int] | None:
        cluster = _metadata(admin)
        for name in names:
            topic = cluster.topics.get(name)
            if topic is None or topic.error is not None or not topic.partitions:
                return None
            if any(p.leader < 0 for p in topic.partitions.values()):
                return None
        return _counts(cluster)

    try:
        counts = wait_until(ready, _TIMEOUT_S, f"topics {names} in the metadata", interval=0.1)
    except WaitTimeout as exc:
        raise Unavailable(str(exc)) from exc
    assert counts is not None
    return counts


def _partition_counts(admin: AdminClient) -> dict[str, int]:
    return _counts(_metadata(admin))


def _metadata(admin: AdminClient) -> ClusterMetadata:
    try:
        return admin.list_topics(timeout=_TIMEOUT_S)
    except KafkaException as exc:
        raise Unavailable(f"Kafka did not answer: {exc}") from exc


def _counts(cluster: ClusterMetadata) -> dict[str, int]:
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
