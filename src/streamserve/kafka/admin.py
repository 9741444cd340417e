"""Topic administration and readiness checks through confluent-kafka's AdminClient."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import (  # type: ignore[attr-defined]  # not re-exported in its stubs
    AdminClient,
    ClusterMetadata,
    NewTopic,
)

from streamserve.errors import DeadlineExceeded, InvalidArgument, Unavailable
from streamserve.waiting import WaitTimeout, wait_until

_POLL_S = 0.2


def admin_client(bootstrap_servers: str) -> AdminClient:
    # Errors reach callers as exceptions; librdkafka's own stderr lines would only be noise
    # (e.g. "connection refused" while a broker is still starting).
    return AdminClient(
        {
            "bootstrap.servers": bootstrap_servers,
            "log_level": 0,
            "reconnect.backoff.ms": 50,
            "reconnect.backoff.max.ms": 500,
        }
    )


def metadata(bootstrap_servers: str, timeout: float = 10.0) -> ClusterMetadata:
    try:
        return admin_client(bootstrap_servers).list_topics(timeout=timeout)
    except KafkaException as exc:
        raise Unavailable(f"Kafka at {bootstrap_servers} did not answer: {exc}") from None


def is_ready(
    bootstrap_servers: str, timeout: float = 2.0, client: AdminClient | None = None
) -> bool:
    """True when the broker answers a metadata request and names a live broker and controller."""
    try:
        cluster = (client or admin_client(bootstrap_servers)).list_topics(timeout=timeout)
    except KafkaException:
        return False
    return bool(cluster.brokers) and cluster.controller_id >= 0


def wait_until_ready(
    bootstrap_servers: str, timeout: float, keep_waiting: Callable[[], bool] = lambda: True
) -> bool:
    """Poll until the broker answers; False once ``timeout`` passes or ``keep_waiting`` says no."""
    client = admin_client(bootstrap_servers)

    def outcome() -> str | None:
        if not keep_waiting():
            return "given up"
        return "ready" if is_ready(bootstrap_servers, timeout=1.0, client=client) else None

    try:
        return wait_until(outcome, timeout, "Kafka ready", interval=_POLL_S) == "ready"
    except WaitTimeout:
        return False


def list_topics(bootstrap_servers: str, timeout: float = 10.0) -> list[str]:
    cluster = metadata(bootstrap_servers, timeout)
    return sorted(name for name in cluster.topics if not name.startswith("__"))


def create_topics(
    kafka: str | AdminClient,
    names: Iterable[str],
    partitions: int = 1,
    config: dict[str, str] | None = None,
    timeout: float = 30.0,
) -> None:
    """Create topics with ``partitions`` partitions each; existing topics are left as they are.

    ``kafka`` is the bootstrap servers or an AdminClient. The replication factor is the
    cluster's default. Idempotent, but an existing topic with a different partition count
    is an InvalidArgument. Returns when every topic has a leader for each partition.
    """
    names = list(names)
    if partitions < 1:
        raise InvalidArgument(f"partitions must be at least 1, got {partitions}")
    client = _as_client(kafka)
    new_topics = [
        # -1: the broker's default.replication.factor (1 on one node, 3 in a cluster)
        NewTopic(name, num_partitions=partitions, replication_factor=-1, config=dict(config or {}))
        for name in names
    ]
    futures = client.create_topics(new_topics, operation_timeout=timeout, request_timeout=timeout)
    for name, future in futures.items():
        try:
            future.result(timeout=timeout)
        except KafkaException as exc:
            error = exc.args[0]
            if error.code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise InvalidArgument(f"cannot create topic {name!r}: {error.str()}") from None
    for name in names:
        found = wait_for_topic(client, name, timeout=timeout)
        if found != partitions:
            raise InvalidArgument(
                f"topic {name!r} already exists with {found} partitions, not {partitions}"
            )


def _as_client(kafka: str | AdminClient) -> AdminClient:
    return admin_client(kafka) if isinstance(kafka, str) else kafka


def create_topic(
    bootstrap_servers: str,
    name: str,
    partitions: int = 1,
    config: dict[str, str] | None = None,
    timeout: float = 30.0,
) -> None:
    create_topics(bootstrap_servers, [name], partitions, config, timeout)


def delete_topic(bootstrap_servers: str, name: str, timeout: float = 30.0) -> bool:
    """Delete ``name``; False when it did not exist."""
    futures = admin_client(bootstrap_servers).delete_topics(
        [name], operation_timeout=timeout, request_timeout=timeout
    )
    try:
        futures[name].result(timeout=timeout)
    except KafkaException as exc:
        if exc.args[0].code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
            return False
        raise InvalidArgument(f"cannot delete topic {name!r}: {exc.args[0].str()}") from None
    return True


def wait_for_topic(kafka: str | AdminClient, name: str, timeout: float = 30.0) -> int:
    """Wait until ``name`` exists and each partition has a leader; return its partition count.

    ``kafka`` is the bootstrap servers or an AdminClient.
    """
    client = _as_client(kafka)
    where = kafka if isinstance(kafka, str) else "Kafka"
    try:
        return wait_until(
            lambda: _partitions_with_leaders(client, name), timeout, "topic", interval=_POLL_S
        )
    except WaitTimeout:
        raise DeadlineExceeded(
            f"topic {name!r} not ready on {where} within {timeout:.0f} s"
        ) from None


def _partitions_with_leaders(client: AdminClient, name: str) -> int:
    """The partition count of ``name`` once each partition has a leader, else 0."""
    try:
        topic = client.list_topics(topic=name, timeout=5).topics.get(name)
    except KafkaException:
        return 0
    if topic is None or topic.error is not None or not topic.partitions:
        return 0
    return len(topic.partitions) if all(p.leader >= 0 for p in topic.partitions.values()) else 0
