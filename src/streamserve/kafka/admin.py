"""Topic administration and readiness checks through confluent-kafka's AdminClient.

Every function takes ``kafka``: the bootstrap servers (``"host:port"``) or the whole client
configuration (a mapping of librdkafka settings, e.g. from
:mod:`streamserve.kafka.client_config`, for a secured cluster), or an AdminClient.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from confluent_kafka import IsolationLevel, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import (  # type: ignore[attr-defined]  # not re-exported in its stubs
    AdminClient,
    ClusterMetadata,
    NewTopic,
    OffsetSpec,
)

from streamserve.errors import DeadlineExceeded, InvalidArgument, KafkaConnectError, Unavailable
from streamserve.kafka.client_config import scrub, secret_values
from streamserve.kafka.client_log import clean_message, with_logging
from streamserve.waiting import WaitTimeout, wait_until

_POLL_S = 0.2
Kafka = str | Mapping[str, Any]
"""Bootstrap servers, or a full librdkafka client configuration."""

# Errors that retrying will not fix: stop at once instead of waiting out the timeout.
_FATAL_CONNECT_CODES = {KafkaError._AUTHENTICATION, KafkaError._SSL}


def client_settings(kafka: Kafka) -> dict[str, Any]:
    return {"bootstrap.servers": kafka} if isinstance(kafka, str) else dict(kafka)


def bootstrap_of(kafka: Kafka | AdminClient) -> str:
    if not isinstance(kafka, str | Mapping):
        return "Kafka"
    return str(client_settings(kafka).get("bootstrap.servers", "Kafka"))


def admin_client(kafka: Kafka, *, quiet: bool = False, **extra: Any) -> AdminClient:
    """An AdminClient; ``quiet`` drops librdkafka's log lines (e.g. "connection refused"
    while a broker is still starting), else they go through Python logging."""
    settings = {
        "reconnect.backoff.ms": 50,
        "reconnect.backoff.max.ms": 500,
        **client_settings(kafka),
        **extra,
    }
    settings = {**settings, "log_level": 0} if quiet else with_logging(settings)
    client: AdminClient = new_client(AdminClient, settings)
    return client


def new_client(kind: Callable[[dict[str, Any]], Any], settings: Mapping[str, Any]) -> Any:
    """``kind(settings)`` with a configuration error turned into one clear InvalidArgument."""
    try:
        return kind(dict(settings))
    except (KafkaException, ValueError, TypeError) as exc:
        detail = scrub(_error_text(exc), secret_values(settings))
        raise InvalidArgument(f"invalid Kafka client configuration: {detail}") from None


def _error_text(exc: BaseException) -> str:
    error = exc.args[0] if exc.args else exc
    return error.str() if isinstance(error, KafkaError) else str(error)


def connected_admin(kafka: Kafka, timeout: float = 30.0) -> AdminClient:
    """An AdminClient that has reached the cluster.

    Raises :class:`KafkaConnectError` with one clear sentence: at once when the broker
    refuses the credentials or the TLS handshake fails (unknown CA, expired or wrong
    certificate), after ``timeout`` seconds when no broker answers at all.
    """
    errors: list[KafkaError] = []
    client = admin_client(kafka, error_cb=errors.append)
    secrets = secret_values(client_settings(kafka))
    where = bootstrap_of(kafka)
    last_failure = ["no answer"]

    def reached() -> bool:
        client.poll(0)
        fatal = next((e for e in errors if e.code() in _FATAL_CONNECT_CODES), None)
        if fatal is not None:
            raise KafkaConnectError(scrub(_connect_failure(fatal, where), secrets))
        try:
            client.list_topics(timeout=min(1.0, timeout))
        except KafkaException as exc:
            last_failure[0] = _error_text(exc)
            return False
        return True

    try:
        wait_until(reached, timeout, "Kafka", interval=_POLL_S)
    except WaitTimeout:
        causes = [e for e in errors if e.code() != KafkaError._ALL_BROKERS_DOWN]
        last = tidy_error(causes[-1].str()) if causes else last_failure[0]
        message = f"cannot connect to Kafka at {where} within {timeout:g} s: {last}"
        raise KafkaConnectError(scrub(message, secrets)) from None
    return client


def tidy_error(text: str) -> str:
    """librdkafka's error text without its thread, broker and timing decorations."""
    text = clean_message(text)
    text = re.sub(r"^(\w+://)?[^\s/]+/(bootstrap|\d+): ", "", text)
    return re.sub(r"\s*\(after \d+ms in state .*\)$", "", text)


def _connect_failure(error: KafkaError, where: str) -> str:
    text = tidy_error(error.str())
    if error.code() == KafkaError._AUTHENTICATION:
        return (
            f"Kafka at {where} refused the credentials (check sasl.username, sasl.password "
            f"and sasl.mechanisms): {text}"
        )
    return (
        f"TLS handshake with Kafka at {where} failed (check ssl.ca.location and the "
        f"client certificate): {text}"
    )


def metadata(kafka: Kafka, timeout: float = 10.0) -> ClusterMetadata:
    try:
        return admin_client(kafka).list_topics(timeout=timeout)
    except KafkaException as exc:
        raise Unavailable(f"Kafka at {bootstrap_of(kafka)} did not answer: {exc}") from None


def is_ready(kafka: Kafka, timeout: float = 2.0, client: AdminClient | None = None) -> bool:
    """True when the broker answers a metadata request and names a live broker and controller."""
    try:
        cluster = (client or admin_client(kafka, quiet=True)).list_topics(timeout=timeout)
    except KafkaException:
        return False
    return bool(cluster.brokers) and cluster.controller_id >= 0


def wait_until_ready(
    kafka: Kafka, timeout: float, keep_waiting: Callable[[], bool] = lambda: True
) -> bool:
    """Poll until the broker answers; False once ``timeout`` passes or ``keep_waiting`` says no."""
    client = admin_client(kafka, quiet=True)

    def outcome() -> str | None:
        if not keep_waiting():
            return "given up"
        return "ready" if is_ready(kafka, timeout=1.0, client=client) else None

    try:
        return wait_until(outcome, timeout, "Kafka ready", interval=_POLL_S) == "ready"
    except WaitTimeout:
        return False


def list_topics(kafka: Kafka, timeout: float = 10.0) -> list[str]:
    cluster = metadata(kafka, timeout)
    return sorted(name for name in cluster.topics if not name.startswith("__"))


def create_topics(
    kafka: Kafka | AdminClient,
    names: Iterable[str],
    partitions: int = 1,
    config: dict[str, str] | None = None,
    timeout: float = 30.0,
) -> None:
    """Create topics with ``partitions`` partitions each; existing topics are left as they are.

    ``kafka`` is the bootstrap servers, a client configuration or an AdminClient. The
    replication factor is the cluster's default. Idempotent, but an existing topic with a
    different partition count is an InvalidArgument. Returns when every topic has a leader
    for each partition.
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


def _as_client(kafka: Kafka | AdminClient) -> AdminClient:
    return admin_client(kafka) if isinstance(kafka, str | Mapping) else kafka


def create_topic(
    kafka: Kafka | AdminClient,
    name: str,
    partitions: int = 1,
    config: dict[str, str] | None = None,
    timeout: float = 30.0,
) -> None:
    create_topics(kafka, [name], partitions, config, timeout)


def delete_topic(kafka: Kafka | AdminClient, name: str, timeout: float = 30.0) -> bool:
    """Delete ``name``; False when it did not exist."""
    futures = _as_client(kafka).delete_topics(
        [name], operation_timeout=timeout, request_timeout=timeout
    )
    try:
        futures[name].result(timeout=timeout)
    except KafkaException as exc:
        if exc.args[0].code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
            return False
        raise InvalidArgument(f"cannot delete topic {name!r}: {exc.args[0].str()}") from None
    return True


def wait_for_topic(kafka: Kafka | AdminClient, name: str, timeout: float = 30.0) -> int:
    """Wait until ``name`` exists and each partition has a leader; return its partition count."""
    client = _as_client(kafka)
    where = bootstrap_of(kafka)
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


def unstable_partitions(
    kafka: Kafka | AdminClient, topic: str, timeout: float = 10.0
) -> dict[int, tuple[int, int]]:
    """Partitions of ``topic`` whose last stable offset is behind the high watermark, as
    ``{partition: (last stable offset, high watermark)}``: an open (or hanging) transaction
    holds back what read_committed readers see there. Empty when every partition is stable.
    (The coordinator writes commit/abort markers after ending a transaction, so one that has
    just ended can still show here for a moment.)"""
    client = _as_client(kafka)
    partitions = [TopicPartition(topic, p) for p in range(wait_for_topic(kafka, topic, timeout))]
    stable = _end_offsets(client, partitions, IsolationLevel.READ_COMMITTED, timeout)
    high = _end_offsets(client, partitions, IsolationLevel.READ_UNCOMMITTED, timeout)
    return {p: (stable[p], high[p]) for p in high if stable[p] < high[p]}


def _end_offsets(
    client: AdminClient,
    partitions: list[TopicPartition],
    isolation: IsolationLevel,
    timeout: float,
) -> dict[int, int]:
    """Each partition's end as a reader with ``isolation`` sees it."""
    latest = OffsetSpec.latest()  # type: ignore[no-untyped-call]  # untyped in its stubs
    futures = client.list_offsets(
        dict.fromkeys(partitions, latest),
        isolation_level=isolation,
        request_timeout=timeout,
    )
    return {tp.partition: int(future.result().offset) for tp, future in futures.items()}
