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
clients are unusable (a fatal librdkafka error such as a fenced producer or static
consumer, or a transaction that could not be committed nor aborted within its bound):
the processor then rebuilds both clients and resumes from the committed offsets.

Every blocking client call is bounded: transactional calls take ``timeout_s``
(:data:`KAFKA_TIMEOUT_S` by default), :meth:`ConsumerThread.call` takes a deadline (a
call that overruns it is abandoned on its thread), and closing runs under
:data:`CLOSE_TIMEOUT_S`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any, TypeVar, cast

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from streamserve.errors import StreamserveError
from streamserve.kafka.client_log import with_logging
from streamserve.stream.telemetry import log_event

log = logging.getLogger("streamserve.stream.kafka")

T = TypeVar("T")
Offsets = dict[tuple[str, int], int]
Headers = list[tuple[str, bytes]]

KAFKA_TIMEOUT_S = 5.0  # each transactional call (init, send offsets, commit, abort)
CLOSE_TIMEOUT_S = 5.0  # closing a consumer+producer pair, in all
UNASSIGNED = -1  # librdkafka's "no partition given": the partitioner picks one
COMMIT_ATTEMPTS = 2  # commit_transaction tries on a retriable error (e.g. a leader moving)


def call_deadline(kafka_timeout_s: float) -> float:
    """How long a consumer-thread call may run before it counts as stuck: a checkpoint
    makes at most four bounded calls (send offsets, two commit attempts, an abort), plus
    slack. librdkafka does not always honour a timeout while a coordinator is gone."""
    return (2 + COMMIT_ATTEMPTS) * kafka_timeout_s + 5.0


CALL_DEADLINE_S = call_deadline(KAFKA_TIMEOUT_S)


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
        # Failed deliveries are what a sink counts; the client then calls back into Python
        # for those only (it settles the successful ones itself: no call per record).
        "delivery.report.only.error": True,
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


def is_fatal(error: KafkaError) -> bool:
    """A client that reported this error is unusable and must be rebuilt.

    librdkafka reports a fatal error either as the error itself (``fatal()``) or as an
    event with code ``_FATAL`` ("Fatal error: ...") whose ``fatal()`` is false.
    """
    return bool(error.fatal()) or error.code() == KafkaError._FATAL


def topic_partitions(offsets: Offsets) -> list[TopicPartition]:
    return [TopicPartition(topic, part, offset) for (topic, part), offset in offsets.items()]


class ConsumerThreadStuck(FatalStreamError):
    """A call on the consumer thread overran its deadline; the thread is abandoned."""


class ConsumerThread:
    """Runs every call on the consumer on one thread, awaited from the event loop.

    The thread is a daemon: a call stuck inside librdkafka never keeps the interpreter
    from exiting, and a caller stops waiting for it after its deadline.
    """

    def __init__(self, consumer: Consumer, deadline_s: float = CALL_DEADLINE_S) -> None:
        self.consumer = consumer
        self.deadline_s = deadline_s
        self.closed = False
        self._calls: queue.SimpleQueue[tuple[Callable[[], Any], Future[Any]] | None] = (
            queue.SimpleQueue()
        )
        self._thread = threading.Thread(target=self._serve, name="kafka-consumer", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while (item := self._calls.get()) is not None:
            call, future = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(call())
            except BaseException as exc:
                future.set_exception(exc)

    async def call(
        self,
        fn: Callable[..., T],
        *args: Any,
        deadline_s: float | None = None,
        **kwargs: Any,
    ) -> T:
        """``fn(*args, **kwargs)`` on the consumer thread; :class:`ConsumerThreadStuck`
        when it does not return within ``deadline_s`` (default: the thread's)."""
        deadline_s = self.deadline_s if deadline_s is None else deadline_s
        future: Future[T] = Future()
        self._calls.put((lambda: fn(*args, **kwargs), future))
        try:
            async with asyncio.timeout(deadline_s):  # unlike wait_for, no task per call
                return await asyncio.wrap_future(future)
        except TimeoutError:
            name = getattr(fn, "__name__", repr(fn))
            raise ConsumerThreadStuck(
                f"consumer thread stuck in {name} for more than {deadline_s:g} s"
            ) from None

    async def consume(self, max_records: int, timeout_s: float) -> list[Message]:
        """What is ready now, up to ``max_records``; else wait up to ``timeout_s`` for one.

        ``consume(n, t)`` alone waits the full ``t`` unless ``n`` records are ready, which
        adds that wait to every record's latency on a quiet topic.
        """
        return await self.call(self._consume_available, max_records, timeout_s)

    def _consume_available(self, max_records: int, timeout_s: float) -> list[Message]:
        messages = self.consumer.consume(max_records, 0)
        return messages or self.consumer.consume(1, timeout_s)

    async def close(self, deadline_s: float = CLOSE_TIMEOUT_S) -> None:
        """Close the consumer (``Consumer.close`` has no timeout: bounded here by
        ``deadline_s``, then abandoned) and end the thread."""
        self.closed = True
        try:
            await self.call(self.consumer.close, deadline_s=deadline_s)
        finally:
            self._calls.put(None)


class _Sink:
    """Producing shared by both guarantees.

    Thread ownership: ``produce``/``poll`` run on the event loop; ``start``, ``commit``,
    ``abort`` and ``close`` block and run on the consumer thread (``commit`` needs the
    consumer's group metadata, which librdkafka only hands out while that thread is not
    stuck in a rebalance callback waiting for someone else). The processor never lets a
    ``produce`` overlap a ``commit``.
    """

    def __init__(
        self, producer: Producer, consumer: Consumer, timeout_s: float = KAFKA_TIMEOUT_S
    ) -> None:
        self.producer = producer
        self.consumer = consumer
        self.timeout_s = timeout_s
        self.failed_deliveries: list[KafkaError] = []
        # Set when the producer failed for good (a fatal error, raised by produce or poll,
        # or, in a transaction, an abortable state): what follows is dropped, and the next
        # commit aborts (or raises FatalStreamError) instead.
        self.broken: KafkaError | None = None
        self.step = ""  # the blocking producer call under way (names a stuck one)

    def _broke(self, exc: KafkaException) -> bool:
        """Remember a producer failure that ends this cycle; False if it is about a record."""
        error = kafka_error(exc)
        if error is None or not is_fatal(error):
            return False
        self.broken = error
        return True

    def produce(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None,
        headers: Headers | None = None,
        partition: int | None = None,
    ) -> None:
        if self.broken is not None:
            return
        partition = UNASSIGNED if partition is None else partition
        try:  # the hot path: one call, no retry bookkeeping
            self._send(topic, value, key, headers, partition)
        except BufferError:
            self._produce_when_room(topic, value, key, headers, partition)
        except KafkaException as exc:
            if not self._broke(exc):
                raise  # about this record (e.g. too large): the caller dead-letters it

    def _send(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None,
        headers: Headers | None,
        partition: int,
    ) -> None:
        self.producer.produce(
            topic,
            value,
            key,
            partition=partition,
            on_delivery=self._on_delivery,
            headers=cast(Any, headers) or None,  # list invariance vs the stubs
        )

    def _produce_when_room(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None,
        headers: Headers | None,
        partition: int,
    ) -> None:
        """The producer queue is full: serve deliveries and retry, up to ``timeout_s``."""
        deadline = time.monotonic() + self.timeout_s
        while self.broken is None:
            self.poll(0.05)
            try:
                self._send(topic, value, key, headers, partition)
                return
            except BufferError:
                if time.monotonic() > deadline:  # nothing delivers: redo this cycle
                    self.broken = KafkaError(KafkaError._QUEUE_FULL, "producer queue full")
                    return
            except KafkaException as exc:
                if not self._broke(exc):
                    raise

    def poll(self, timeout_s: float = 0) -> None:
        try:
            self.producer.poll(timeout_s)
        except KafkaException as exc:  # a fatal error surfaces here too (e.g. fenced)
            if not self._broke(exc):
                raise

    def _on_delivery(self, error: KafkaError | None, _message: Message) -> None:
        if error is not None:
            self.failed_deliveries.append(error)

    def close(self, timeout_s: float = CLOSE_TIMEOUT_S) -> None:
        self.producer.flush(timeout_s)

    def discard(self) -> None:
        """Drop what is queued (the clients are being rebuilt; it will be redone)."""
        with contextlib.suppress(KafkaException):  # a fatal producer refuses even this
            self.producer.purge()
            self.producer.flush(0)


class TransactionalSink(_Sink):
    def __init__(
        self, producer: Producer, consumer: Consumer, timeout_s: float = KAFKA_TIMEOUT_S
    ) -> None:
        super().__init__(producer, consumer, timeout_s)
        self.in_transaction = False

    def _broke(self, exc: KafkaException) -> bool:
        error = kafka_error(exc)
        if error is not None and error.code() == KafkaError._STATE:
            self.broken = error  # the transaction is in an abortable state
            return True
        return super()._broke(exc)

    def start(self) -> None:
        """Fence older instances with our transactional.id and abort what they left open."""
        try:
            self.step = "init_transactions"
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
        if self.broken is not None:
            return  # this transaction will be aborted and its records redone
        try:
            if not self.in_transaction:
                self._begin()
            super().produce(topic, value, key, headers, partition)
        except FatalStreamError as exc:  # begin_transaction refused
            self.broken = KafkaError(KafkaError._FATAL, str(exc), fatal=True)

    def commit(self, offsets: Offsets) -> bool:
        """Commit this cycle's outputs together with ``offsets`` (one transaction).

        KIP-447: the offsets carry the consumer's group metadata (generation, member), so
        the broker refuses them from an instance that no longer owns the partitions.
        """
        if self.broken is not None:
            self._abort_broken()
        if not self.in_transaction:
            if not offsets:
                return False
            self._begin()
        try:
            if offsets:
                self.step = "send_offsets_to_transaction"
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

    def _commit_with_retries(self, attempts: int = COMMIT_ATTEMPTS) -> None:
        for attempt in range(attempts):
            try:
                self.step = f"commit_transaction (attempt {attempt + 1})"
                self.producer.commit_transaction(self.timeout_s)
                return
            except KafkaException as exc:
                error = kafka_error(exc)
                if error is None or not error.retriable() or attempt == attempts - 1:
                    raise

    def _abort_broken(self) -> None:
        error = self.broken
        assert error is not None
        if is_fatal(error):
            raise FatalStreamError(f"producer failed: {error.str()}")
        log_event(log, "transaction aborted", logging.WARNING, error=error.str())
        self.abort()  # clears ``broken``
        raise CheckpointAborted(f"transaction aborted: {error.str()}")

    def _after_failed_commit(self, exc: KafkaException) -> None:
        """A fatal error ends the clients; any other failure aborts the transaction (and if
        even the abort fails, e.g. the broker is gone, the clients are rebuilt)."""
        error = kafka_error(exc)
        if error is None or is_fatal(error):
            raise FatalStreamError(f"transaction failed: {exc}") from exc
        log_event(log, "transaction aborted", logging.WARNING, error=error.str())
        self.abort()
        raise CheckpointAborted(f"transaction aborted: {error.str()}") from exc

    def abort(self) -> None:
        """Abort the open transaction (its outputs and offsets disappear).

        Only a completed abort lets the caller rewind and redo the work: when the abort
        fails (even with a state error: a commit may be under way), the outcome of the
        transaction is unknown and :class:`FatalStreamError` makes the processor rebuild
        its clients, whose ``init_transactions`` settles it before anything is read again.
        """
        was_open = self.in_transaction or self.broken is not None
        self.in_transaction = False
        self.broken = None
        self.failed_deliveries.clear()
        if not was_open:
            return  # no transaction was open
        try:
            self.step = "abort_transaction"
            self.producer.abort_transaction(self.timeout_s)
        except KafkaException as exc:
            raise FatalStreamError(f"cannot abort transaction: {exc}") from exc

    def _begin(self) -> None:
        try:
            self.producer.begin_transaction()
        except KafkaException as exc:
            raise FatalStreamError(f"cannot begin a transaction: {exc}") from exc
        self.in_transaction = True

    def close(self, timeout_s: float = CLOSE_TIMEOUT_S) -> None:
        if self.in_transaction:
            self.in_transaction = False
            self.producer.abort_transaction(timeout_s)


class AtLeastOnceSink(_Sink):
    def start(self) -> None:
        return None

    def commit(self, offsets: Offsets) -> bool:
        """Wait for every delivery, then commit ``offsets``; a lost delivery aborts.

        Returns False when the offset commit failed: outputs are delivered and the next
        commit (absolute offsets) covers these records too, so nothing is redone.
        """
        if self.broken is not None:
            raise FatalStreamError(f"producer failed: {self.broken.str()}")
        try:
            remaining = self.producer.flush(self.timeout_s)
        except KafkaException as exc:
            raise FatalStreamError(f"producer failed: {exc}") from exc
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
