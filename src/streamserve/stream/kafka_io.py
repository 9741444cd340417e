"""The processor's Kafka side: client settings, the consumer thread and the two sinks.

The consumer lives on one dedicated thread (:class:`ConsumerThread`) so that blocking
``consume()`` calls and the rebalance callbacks they run never block the event loop.

A sink owns the producer and the delivery guarantee:

- :class:`TransactionalSink` (exactly-once): outputs, DLQ records and the consumed offsets
  go into one transaction per checkpoint (KIP-447: ``send_offsets_to_transaction`` with
  the consumer's group metadata, so a zombie with an old generation is fenced).
- :class:`AtLeastOnceSink`: idempotent producer; a checkpoint flushes the producer, then
  commits offsets only if every delivery succeeded.

``commit`` raises :class:`CheckpointAborted` when the cycle's work must be redone
(the caller rewinds to the committed offsets) and :class:`FatalStreamError` when the
producer is unusable (fenced by a newer instance, fatal idempotence error).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from streamserve.errors import StreamserveError
from streamserve.kafka.client_log import with_logging
from streamserve.stream.telemetry import log_event

log = logging.getLogger("streamserve.stream.kafka")

T = TypeVar("T")
Offsets = dict[tuple[str, int], int]
Headers = list[tuple[str, bytes]]


class CheckpointAborted(StreamserveError):
    """The checkpoint did not commit; outputs since the last commit must be redone."""


class FatalStreamError(StreamserveError):
    """The processor cannot go on (e.g. fenced by a newer instance with the same id)."""


def consumer_settings(
    bootstrap_servers: str,
    group_id: str,
    group_instance_id: str | None,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    settings: dict[str, Any] = {
        "bootstrap.servers": bootstrap_servers,
        "group.id": group_id,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "isolation.level": "read_committed",
        "partition.assignment.strategy": "cooperative-sticky",
        "session.timeout.ms": 10_000,
        "heartbeat.interval.ms": 1_000,
        "max.poll.interval.ms": 300_000,
        "enable.partition.eof": False,
    }
    if group_instance_id:
        # Static membership: a restarted instance takes its partitions back at once.
        settings["group.instance.id"] = group_instance_id
    settings.update(overrides or {})
    return with_logging(settings)


def producer_settings(
    bootstrap_servers: str,
    transactional_id: str | None,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    settings: dict[str, Any] = {
        "bootstrap.servers": bootstrap_servers,
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 5,
        "compression.type": "lz4",
    }
    if transactional_id:
        settings["transactional.id"] = transactional_id
        settings["transaction.timeout.ms"] = 30_000
    settings.update(overrides or {})
    return with_logging(settings)


def kafka_error(exc: BaseException) -> KafkaError | None:
    if isinstance(exc, KafkaException) and exc.args and isinstance(exc.args[0], KafkaError):
        return exc.args[0]
    return None


def topic_partitions(offsets: Offsets) -> list[TopicPartition]:
    return [TopicPartition(topic, part, offset) for (topic, part), offset in offsets.items()]


class ConsumerThread:
    """Runs every call on the consumer on one thread, awaited from the event loop."""

    def __init__(self, consumer: Consumer) -> None:
        self.consumer = consumer
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="kafka-consumer")

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: fn(*args, **kwargs))

    async def consume(self, max_records: int, timeout_s: float) -> list[Message]:
        """What is ready now, up to ``max_records``; else wait up to ``timeout_s`` for one.

        ``consume(n, t)`` alone waits the full ``t`` unless ``n`` records are ready, which
        adds that wait to every record's latency on a quiet topic.
        """
        return await self.call(self._consume_available, max_records, timeout_s)

    def _consume_available(self, max_records: int, timeout_s: float) -> list[Message]:
        messages = self.consumer.consume(max_records, 0)
        return messages or self.consumer.consume(1, timeout_s)

    async def close(self) -> None:
        try:
            await self.call(self.consumer.close)
        finally:
            self._executor.shutdown(wait=False)


class _Sink:
    """Producing shared by both guarantees.

    Thread ownership: ``produce``/``poll`` run on the event loop; ``start``, ``commit``,
    ``abort`` and ``close`` block and run on the consumer thread (``commit`` needs the
    consumer's group metadata, which librdkafka only hands out while that thread is not
    stuck in a rebalance callback waiting for someone else). The processor never lets a
    ``produce`` overlap a ``commit``.
    """

    def __init__(self, producer: Producer, consumer: Consumer, timeout_s: float = 30.0) -> None:
        self.producer = producer
        self.consumer = consumer
        self.timeout_s = timeout_s
        self.failed_deliveries: list[KafkaError] = []

    def produce(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None,
        headers: Headers | None = None,
        partition: int | None = None,
    ) -> None:
        kwargs: dict[str, Any] = {"on_delivery": self._on_delivery}
        if headers:
            kwargs["headers"] = headers
        if partition is not None:
            kwargs["partition"] = partition
        while True:
            try:
                self.producer.produce(topic, value, key, **kwargs)
                return
            except BufferError:
                self.producer.poll(0.05)  # queue full: serve deliveries, then retry

    def poll(self) -> None:
        self.producer.poll(0)

    def _on_delivery(self, error: KafkaError | None, _message: Message) -> None:
        if error is not None:
            self.failed_deliveries.append(error)

    def close(self) -> None:
        self.producer.flush(5.0)


class TransactionalSink(_Sink):
    def __init__(self, producer: Producer, consumer: Consumer, timeout_s: float = 30.0) -> None:
        super().__init__(producer, consumer, timeout_s)
        self.in_transaction = False

    def start(self) -> None:
        """Fence older instances with our transactional.id and abort what they left open."""
        try:
            self.producer.init_transactions(self.timeout_s)
        except KafkaException as exc:
            raise FatalStreamError(f"cannot initialise transactions: {exc}") from exc

    def produce(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None,
        headers: Headers | None = None,
        partition: int | None = None,
    ) -> None:
        if not self.in_transaction:
            self._begin()
        super().produce(topic, value, key, headers, partition)

    def commit(self, offsets: Offsets) -> bool:
        """Commit this cycle's outputs together with ``offsets`` (one transaction).

        KIP-447: the offsets carry the consumer's group metadata (generation, member), so
        the broker refuses them from an instance that no longer owns the partitions.
        """
        if not self.in_transaction:
            if not offsets:
                return False
            self._begin()
        try:
            if offsets:
                self.producer.send_offsets_to_transaction(
                    topic_partitions(offsets),
                    self.consumer.consumer_group_metadata(),
                    self.timeout_s,
                )
            self._commit_with_retries()
        except KafkaException as exc:
            self._after_failed_commit(exc)
        finally:
            self.in_transaction = False
        return True

    def _commit_with_retries(self, attempts: int = 3) -> None:
        for attempt in range(attempts):
            try:
                self.producer.commit_transaction(self.timeout_s)
                return
            except KafkaException as exc:
                error = kafka_error(exc)
                if error is None or not error.retriable() or attempt == attempts - 1:
                    raise

    def _after_failed_commit(self, exc: KafkaException) -> None:
        error = kafka_error(exc)
        if error is not None and error.txn_requires_abort():
            log_event(log, "transaction aborted", logging.WARNING, error=error.str())
            self.abort()
            raise CheckpointAborted(f"transaction aborted: {error.str()}") from exc
        raise FatalStreamError(f"transaction failed: {exc}") from exc

    def abort(self) -> None:
        """Abort the open transaction (its outputs and offsets disappear)."""
        self.in_transaction = False
        try:
            self.producer.abort_transaction(self.timeout_s)
        except KafkaException as exc:
            error = kafka_error(exc)
            if error is not None and error.code() == KafkaError._STATE:
                return  # no transaction was open
            raise FatalStreamError(f"cannot abort transaction: {exc}") from exc
        finally:
            self.failed_deliveries.clear()

    def _begin(self) -> None:
        try:
            self.producer.begin_transaction()
        except KafkaException as exc:
            raise FatalStreamError(f"cannot begin a transaction: {exc}") from exc
        self.in_transaction = True

    def close(self) -> None:
        if self.in_transaction:
            self.abort()


class AtLeastOnceSink(_Sink):
    def start(self) -> None:
        return None

    def commit(self, offsets: Offsets) -> bool:
        """Wait for every delivery, then commit ``offsets``; a lost delivery aborts.

        Returns False when the offset commit failed: outputs are delivered and the next
        commit (absolute offsets) covers these records too, so nothing is redone.
        """
        remaining = self.producer.flush(self.timeout_s)
        if self.failed_deliveries or remaining:
            errors = [e.str() for e in self.failed_deliveries[:3]]
            self.failed_deliveries.clear()
            raise CheckpointAborted(f"deliveries failed ({remaining} pending): {errors}")
        if not offsets:
            return False
        try:
            self.consumer.commit(offsets=topic_partitions(offsets), asynchronous=False)
        except KafkaException as exc:
            log_event(log, "offset commit failed", logging.WARNING, error=str(exc))
            return False
        return True

    def abort(self) -> None:
        self.failed_deliveries.clear()


Sink = TransactionalSink | AtLeastOnceSink


def describe_partitions(partitions: Sequence[TopicPartition]) -> str:
    return ",".join(f"{tp.topic}[{tp.partition}]" for tp in partitions) or "-"
