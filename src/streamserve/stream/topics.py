"""Make sure the processor's topics exist before it starts."""

from __future__ import annotations

from collections.abc import Sequence

from confluent_kafka import KafkaException
from confluent_kafka.admin import (  # type: ignore[attr-defined]  # not re-exported in its stubs
    AdminClient,
    ClusterMetadata,
)

from streamserve.errors import NotFound, Unavailable
from streamserve.kafka.admin import Kafka, bootstrap_of, connected_admin, create_topics

_TIMEOUT_S = 30.0


def ensure_topics(
    kafka: Kafka,
    input_topic: str,
    output_topics: Sequence[str],
    create: bool,
    *,
    connect_timeout_s: float = _TIMEOUT_S,
) -> dict[str, int]:
    """Partition count per topic. Missing output topics are created (like the input topic's
    partition count, the cluster's default replication factor, by
    :func:`streamserve.kafka.admin.create_topics`) when ``create`` is true.

    ``kafka`` is the bootstrap servers or the admin client's whole configuration. Raises
    :class:`streamserve.errors.KafkaConnectError` when Kafka cannot be reached or refuses
    the credentials or the TLS handshake (see :func:`connected_admin`)."""
    admin = connected_admin(kafka, connect_timeout_s)
    bootstrap_servers = bootstrap_of(kafka)
    counts = _partition_counts(admin)
    if input_topic not in counts:
        raise NotFound(f"input topic {input_topic!r} does not exist on {bootstrap_servers}")
    missing = [name for name in dict.fromkeys(output_topics) if name not in counts]
    if missing and not create:
        raise NotFound(f"topics {missing} do not exist on {bootstrap_servers}")
    if missing:
        # create_topics returns once each new topic has a leader for every partition: the
        # counts are known without reading the (possibly lagging) full metadata again
        create_topics(admin, missing, counts[input_topic], timeout=_TIMEOUT_S)
        counts.update(dict.fromkeys(missing, counts[input_topic]))
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
