"""Test your own pipeline against real processes: a Kafka broker, a model server, a processor.

Everything here runs the real thing (no mocks) and waits with deadlines, never sleeps::

    from streamserve.testing import (
        ModelServerProcess, StreamProcess, kafka_broker, produce, read_topic, unique_topic,
    )

    with kafka_broker() as bootstrap:
        source, sink = unique_topic(bootstrap, "in"), unique_topic(bootstrap, "out")
        args = ["--bootstrap-servers", bootstrap, "--input-topic", source,
                "--output-topic", sink, "--group-id", "g", "--model-base-path", "models/tiny"]
        with StreamProcess(args, Path("stream.log")) as stream:
            stream.wait_ready()
            produce(bootstrap, source, [(None, b"k", b'{"instances": [[1.0, 2.0]]}')])
            outputs = read_topic(bootstrap, sink, min_count=1)

- :func:`kafka_broker`: a local broker for the ``with`` block (or the one named by
  ``STREAMSERVE_KAFKA_BOOTSTRAP``); :func:`unique_topic` creates a fresh topic on it.
  :func:`secured_kafka_broker` gives a :class:`~streamserve.kafka.LocalKafka` whose listener
  is secured (``sasl_ssl``, ``sasl_plaintext``, ``ssl``, ``mtls``): pass its
  ``client_config`` wherever a bootstrap address goes below, and its
  ``client_properties_file`` to ``streamserve stream --kafka-config``.
- :func:`schema_registry`: the URL of a Confluent-compatible Schema Registry (Apicurio)
  for the block (or the one named by ``STREAMSERVE_SCHEMA_REGISTRY``);
  :func:`secured_schema_registry` gives a
  :class:`~streamserve.kafka.registry.LocalSchemaRegistry` with TLS and/or basic auth, whose
  ``client_config`` goes to confluent-kafka's ``SchemaRegistryClient``.
- :class:`ModelServerProcess` / :class:`StreamProcess`: ``streamserve serve`` /
  ``streamserve stream`` as child processes (:class:`~streamserve.processes.ChildProcess`);
  :func:`model_server` serves one model directory.
- :func:`produce` / :func:`read_topic`: write records, read them back ``read_committed``.
- :func:`metric_value`: one metric from Prometheus text; :func:`wait_until`: poll with a
  deadline.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from streamserve.processes import (
    ChildProcess,
    ModelServerProcess,
    StreamProcess,
    free_port,
    metric_value,
    model_server,
)
from streamserve.waiting import WaitTimeout, wait_until

if TYPE_CHECKING:
    from streamserve.kafka import LocalKafka
    from streamserve.kafka.registry import LocalSchemaRegistry

Kafka = str | Mapping[str, Any]
"""Bootstrap servers, or a whole librdkafka client configuration (a secured broker)."""

__all__ = [
    "BOOTSTRAP_ENV",
    "ChildProcess",
    "ModelServerProcess",
    "ReadRecord",
    "StreamProcess",
    "WaitTimeout",
    "free_port",
    "kafka_broker",
    "metric_value",
    "model_server",
    "produce",
    "read_topic",
    "schema_registry",
    "secured_kafka_broker",
    "secured_schema_registry",
    "unique_topic",
    "wait_until",
]

BOOTSTRAP_ENV = "STREAMSERVE_KAFKA_BOOTSTRAP"
"""Set to ``host:port`` to make :func:`kafka_broker` reuse a running broker."""
REGISTRY_ENV = "STREAMSERVE_SCHEMA_REGISTRY"
"""Set to a registry URL to make :func:`schema_registry` reuse a running registry."""


@contextlib.contextmanager
def kafka_broker() -> Iterator[str]:
    """Bootstrap servers of a local Kafka broker started (and stopped) for the block.

    With ``STREAMSERVE_KAFKA_BOOTSTRAP`` set (e.g. to a ``streamserve kafka start``
    broker), that broker is used instead and left running.
    """
    existing = os.environ.get(BOOTSTRAP_ENV)
    if existing:
        yield existing
        return
    from streamserve.kafka import LocalKafka

    with LocalKafka() as kafka:
        yield kafka.bootstrap_servers


@contextlib.contextmanager
def secured_kafka_broker(security: str) -> Iterator[LocalKafka]:
    """A local broker whose client listener uses ``security`` (see ``LocalKafka``), started
    and stopped (with its generated secrets) for the block."""
    from streamserve.kafka import LocalKafka

    with LocalKafka(security=security) as kafka:
        yield kafka


@contextlib.contextmanager
def schema_registry() -> Iterator[str]:
    """The URL (confluent-kafka's ``schema.registry.url``) of a local Schema Registry started
    (and stopped) for the block: Apicurio Registry, fetched on first use, in-memory storage.

    With ``STREAMSERVE_SCHEMA_REGISTRY`` set (e.g. to the URL ``streamserve kafka start
    --schema-registry`` printed), that registry is used instead and left running.
    """
    existing = os.environ.get(REGISTRY_ENV)
    if existing:
        yield existing.rstrip("/")
        return
    from streamserve.kafka.registry import LocalSchemaRegistry

    with LocalSchemaRegistry() as registry:
        yield registry.url


@contextlib.contextmanager
def secured_schema_registry(
    *, tls: bool = True, basic_auth: bool = True, password: str | None = None
) -> Iterator[LocalSchemaRegistry]:
    """A local registry with TLS (throw-away CA: ``ca_file``) and/or HTTP basic auth (user
    ``streamserve``, ``password`` or a generated one), started and stopped for the block; pass
    its ``client_config`` to ``SchemaRegistryClient``, its ``client_properties_file`` to
    ``streamserve stream --kafka-config``."""
    from streamserve.kafka.registry import LocalSchemaRegistry

    with LocalSchemaRegistry(tls=tls, basic_auth=basic_auth, password=password) as registry:
        yield registry


def unique_topic(kafka: Kafka, prefix: str = "t", partitions: int = 1) -> str:
    """Create a new topic named ``PREFIX-<random>`` and return its name once it is ready."""
    from streamserve.kafka import admin

    name = f"{prefix}-{uuid.uuid4().hex[:10]}"
    admin.create_topic(kafka, name, partitions)
    return name


def _settings(kafka: Kafka, **extra: Any) -> dict[str, Any]:
    from streamserve.kafka.admin import client_settings
    from streamserve.kafka.client_log import with_logging

    return with_logging({**client_settings(kafka), **extra})


@dataclass(frozen=True)
class ReadRecord:
    """One record read back by :func:`read_topic`."""

    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: dict[str, bytes] = field(default_factory=dict)

    def json(self) -> Any:
        return json.loads(self.value or b"null")


def produce(
    kafka: Kafka,
    topic: str,
    records: Iterable[tuple[int | None, bytes | None, bytes | None]],
    headers: list[tuple[str, bytes]] | None = None,
) -> int:
    """Produce ``(partition, key, value)`` tuples (idempotent producer); return the count."""
    from confluent_kafka import Producer

    producer = Producer(_settings(kafka, **{"enable.idempotence": True, "linger.ms": 5}))
    extra: dict[str, Any] = {"headers": headers} if headers else {}
    count = 0
    for partition, key, value in records:
        where = {} if partition is None else {"partition": partition}
        _produce_one(producer, topic, key, value, {**extra, **where})
        count += 1
    if producer.flush(30) != 0:
        raise RuntimeError("records not delivered within 30 s")
    return count


def _produce_one(
    producer: Any, topic: str, key: bytes | None, value: bytes | None, kwargs: dict[str, Any]
) -> None:
    while True:
        try:
            producer.produce(topic, value, key, **kwargs)
            return
        except BufferError:
            producer.poll(0.1)


def read_topic(
    kafka: Kafka,
    topic: str,
    min_count: int,
    timeout: float = 60.0,
    quiet_s: float = 1.5,
    read_committed: bool = True,
) -> list[ReadRecord]:
    """Every record of ``topic`` from the start: at least ``min_count`` unless ``timeout``
    passes, then on until nothing new arrives for ``quiet_s`` (to catch duplicates)."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    consumer = Consumer(
        _settings(
            kafka,
            **{
                "group.id": f"reader-{time.monotonic_ns()}",
                "enable.auto.commit": False,
                "isolation.level": "read_committed" if read_committed else "read_uncommitted",
            },
        )
    )
    try:
        consumer.assign(
            [
                TopicPartition(topic, p, OFFSET_BEGINNING)
                for p in _partitions(kafka, topic, min_count)
            ]
        )
        return _consume_until_quiet(consumer, min_count, timeout, quiet_s)
    finally:
        consumer.close()


def _partitions(kafka: Kafka, topic: str, min_count: int) -> range:
    """The topic's partitions. When records are expected, wait until each has a leader:
    right after a broker restart the metadata may list the topic with no partitions yet,
    and a reader assigned to none would see nothing."""
    from streamserve.kafka.admin import wait_for_topic

    if min_count > 0:
        return range(wait_for_topic(kafka, topic, timeout=60.0))
    with contextlib.suppress(Exception):
        return range(wait_for_topic(kafka, topic, timeout=5.0))
    return range(0)


def _consume_until_quiet(
    consumer: Any, min_count: int, timeout: float, quiet_s: float
) -> list[ReadRecord]:
    # Real work per iteration (accumulating records), so a plain loop rather than wait_until.
    from streamserve.stream.processor import input_record

    found: list[ReadRecord] = []
    deadline = time.monotonic() + timeout
    last_new = time.monotonic()
    while time.monotonic() < deadline:
        if len(found) >= min_count and time.monotonic() - last_new > quiet_s:
            break
        for message in consumer.consume(1000, 0.2):
            if message.error():
                continue
            record = input_record(message)
            headers = {k: v for k, v in record.headers if v is not None}
            found.append(
                ReadRecord(record.partition, record.offset, record.key, record.value, headers)
            )
            last_new = time.monotonic()
    return found
