"""The stream processor: Kafka topic → decode → micro-batch → model → encode → Kafka topic.

One asyncio pipeline, stages connected by bounded queues::

    consume (thread) → intake → decode workers → MicroBatcher → model-call workers
                                                                      ↓
    Kafka (one transaction per checkpoint) ← sink: outputs in offset order per partition

How a record's journey stays correct:

1. **Order.** Works finish in any order; the sink releases them per partition in offset
   order (:class:`~streamserve.stream.pipeline.PartitionBook`).
2. **Commit only what is handled.** A checkpoint (every ``commit_interval_ms``) commits,
   per partition, the offset after the last record whose output or DLQ record was produced.
   Exactly-once: outputs + offsets in one transaction; at-least-once: flush, then commit.
3. **Rebalance.** Cooperative-sticky assignment. On revoke the sink checkpoints everything
   produced so far (the revoked partitions' in-flight works are dropped: the next owner
   redoes them from the committed offset). On lost partitions, or when a checkpoint is
   aborted, everything uncommitted is dropped and each partition seeks back to its last
   commit.
4. **Failures.** A bad record → DLQ with headers naming stage, reason and exception; a
   transient model error → retried (never DLQ); all breakers open → fallback model, or
   consumption pauses until a half-open probe succeeds (:mod:`~streamserve.stream.invoker`).
5. **Stop.** ``stop()`` stops consuming, lets in-flight work finish (bounded by
   ``shutdown_timeout_s``), commits it (bounded by :data:`FINAL_COMMIT_S`) and closes the
   clients (bounded by :data:`~streamserve.stream.kafka_io.CLOSE_TIMEOUT_S`): ``run``
   returns at most ``shutdown_timeout_s + FINAL_COMMIT_S + CLOSE_TIMEOUT_S`` seconds after
   ``stop()``, whatever state Kafka is in.
6. **Broken clients.** A fatal client error (a fenced static consumer or producer, a
   ``_FATAL`` event, a transaction that can be neither committed nor aborted, a consumer
   call stuck past its deadline) is never just logged: the processor drops everything
   uncommitted, closes both clients (bounded), builds new ones, re-initialises
   transactions (which fences the old producer and settles its open transaction) and
   resubscribes, so the work resumes from the committed offsets without a restart. While
   the brokers are unreachable it keeps retrying; more than ``max_client_rebuilds``
   rebuilds within ``client_rebuild_window_s`` (e.g. two live instances sharing one
   ``instance_id`` fencing each other) end ``run`` with :class:`FatalStreamError`.
7. **Health.** ``/healthz`` and ``/readyz`` beside ``/metrics`` on ``metrics_port``
   (:mod:`~streamserve.stream.health`): live while the event loop and the consume loop make
   progress (a client rebuild that keeps retrying counts as progress); ready while the
   model answers, the group is joined (not while clients are rebuilt) and a breaker is
   closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from confluent_kafka import (
    TIMESTAMP_NOT_AVAILABLE,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
)
from confluent_kafka import TopicPartition as KafkaTopicPartition

from streamserve.kafka.admin import new_client
from streamserve.predictors.base import Predictor
from streamserve.stream import kafka_io
from streamserve.stream.batcher import Chunk, MicroBatcher, chunks_of, merge
from streamserve.stream.breaker import BreakerPolicy
from streamserve.stream.codecs import (
    InputRecord,
    RecordCodec,
    StackedBatch,
    batch_encoder,
    batch_preparer,
    declared_output_topics,
    stacked_decoder,
)
from streamserve.stream.errors import DependencyUnavailable, RecordError
from streamserve.stream.health import HealthPolicy, OperationsServer, StreamHealth
from streamserve.stream.invoker import ModelInvoker, Part, RetryPolicy, build_invoker
from streamserve.stream.kafka_io import CheckpointAborted, FatalStreamError
from streamserve.stream.output import HeaderPolicy, OutputWriter
from streamserve.stream.pipeline import PartitionBook, Work
from streamserve.stream.telemetry import StreamMetrics, log_event
from streamserve.stream.topics import ensure_topics

log = logging.getLogger("streamserve.stream")
BUFFER_FULL_WAIT_S = 0.005  # how long the consume loop waits for the pipeline to drain
FINAL_COMMIT_S = 3.0  # a stop's last commit, after shutdown_timeout_s at most
HOLD_BACKOFF_S = 0.2  # first retry of a held batch's prepare (a dependency was unreachable)
HOLD_MAX_S = 5.0  # longest wait between those retries
RebalanceCallback = Callable[[Consumer, list[KafkaTopicPartition]], None]

Guarantee = Literal["exactly-once", "at-least-once"]


@dataclass
class ProcessorConfig:
    """Everything but the model and the record format. Times in ms unless named ``_s``."""

    bootstrap_servers: str
    input_topic: str
    output_topic: str
    group_id: str
    dlq_topic: str | None = None  # default: "<input_topic>.dlq"
    guarantee: Guarantee = "exactly-once"
    # A stable, unique id per replica (e.g. the pod name) lets a restarted instance fence
    # its predecessor's transaction and take its partitions back at once (static
    # membership). Without one, each process gets "<host>-<pid>".
    instance_id: str | None = None
    static_membership: bool = True  # only with an explicit instance_id
    max_batch_size: int = 32
    max_batch_delay_ms: float = 5.0
    max_in_flight: int = 4
    decode_concurrency: int = 32
    max_buffered_records: int = 2000
    consume_batch_size: int = 500
    commit_interval_ms: float = 100.0
    shutdown_timeout_s: float = 7.0
    kafka_timeout_s: float = kafka_io.KAFKA_TIMEOUT_S  # each transactional call
    max_client_rebuilds: int = 5  # within client_rebuild_window_s, then run() fails
    client_rebuild_window_s: float = 300.0
    output_partitioning: Literal["input", "key"] = "input"
    # Input headers carried to outputs: these only (None: all), minus the denied ones;
    # traceparent/tracestate always.
    header_allowlist: Sequence[str] | None = None
    header_denylist: Sequence[str] = ()
    create_missing_topics: bool = True
    metrics_port: int | None = None  # also serves /healthz and /readyz
    health: HealthPolicy = field(default_factory=HealthPolicy)
    breaker: BreakerPolicy = field(default_factory=BreakerPolicy)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    # librdkafka settings per client (security, tuning; bootstrap.servers may be repeated)
    consumer_overrides: dict[str, Any] = field(default_factory=dict)
    producer_overrides: dict[str, Any] = field(default_factory=dict)
    admin_overrides: dict[str, Any] = field(default_factory=dict)
    kafka_connect_timeout_s: float = 30.0  # start-up: no broker answering is an error

    def __post_init__(self) -> None:
        if self.guarantee not in ("exactly-once", "at-least-once"):
            raise ValueError("guarantee must be 'exactly-once' or 'at-least-once'")
        if min(self.max_batch_size, self.max_in_flight, self.decode_concurrency) < 1:
            raise ValueError("max_batch_size, max_in_flight and decode_concurrency must be >= 1")

    @property
    def resolved_dlq_topic(self) -> str:
        return self.dlq_topic or f"{self.input_topic}.dlq"

    @property
    def resolved_instance_id(self) -> str:
        return self.instance_id or f"{socket.gethostname()}-{os.getpid()}"

    @property
    def group_instance_id(self) -> str | None:
        return self.instance_id if self.static_membership and self.instance_id else None

    @property
    def transactional_id(self) -> str:
        return f"streamserve-{self.group_id}-{self.resolved_instance_id}"


ReadyCallback = Callable[[dict[str, Any]], None]


class StreamProcessor:
    """Run with ``await processor.run()``; ``stop()`` (thread-safe) ends it gracefully.

    ``predictor`` is one :class:`Predictor` or several (one per remote target: each gets a
    circuit breaker, calls go to the least busy one). ``fallback`` answers while every
    breaker is open. ``codec`` decodes records and encodes outputs.
    """

    def __init__(
        self,
        config: ProcessorConfig,
        predictor: Predictor | Sequence[Predictor],
        codec: RecordCodec,
        fallback: Predictor | None = None,
        metrics: StreamMetrics | None = None,
        on_ready: ReadyCallback | None = None,
    ) -> None:
        self.config = config
        self.codec = codec
        self._decode_stacked = stacked_decoder(codec)
        self._encode_batch = batch_encoder(codec)
        self._prepare = batch_preparer(codec)
        self._held: list[Work] = []  # consumed, waiting for the codec's prepare to succeed
        self._held_retry_at = 0.0
        self._held_backoff_s = 0.0
        self.metrics = metrics or StreamMetrics()
        predictors = [predictor] if not isinstance(predictor, Sequence) else list(predictor)
        self.invoker: ModelInvoker = build_invoker(
            predictors, fallback, config.breaker, config.retry, self.metrics
        )
        self.on_ready = on_ready
        self.health = StreamHealth(config.health, self.invoker.degraded)
        self._predictors = predictors
        self._operations: OperationsServer | None = None
        self.book = PartitionBook()
        self.metrics_port: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop = asyncio.Event()
        self._ready = asyncio.Event()
        self._committing = False
        self._decode_queue: asyncio.Queue[Work] = asyncio.Queue()
        self._batch_queue: asyncio.Queue[Chunk] = asyncio.Queue()
        self._call_queue: asyncio.Queue[list[Chunk]] = asyncio.Queue(maxsize=1)
        self._paused: set[tuple[str, int]] = set()
        self._pause_reason = ""
        self._consuming = True
        self._sinking = True
        self._closed = False
        self._records_in = self.metrics.records_in.labels(config.input_topic)
        self._generation = 0  # bumped when the clients are rebuilt: old callbacks go quiet
        self._clients_ok = False
        self._rebuilds: list[float] = []

    # ------------------------------------------------------------------ lifecycle

    def stop(self) -> None:
        """Ask the processor to finish in-flight work, commit it and return from ``run``."""
        loop = self._loop
        if loop is None:
            self._stop.set()
        else:
            loop.call_soon_threadsafe(self._stop.set)

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        try:
            await self._open()
        except BaseException:
            await self._close_clients(graceful=False)
            raise
        consume = asyncio.create_task(self._consume_loop(), name="consume")
        sink = asyncio.create_task(self._sink_loop(), name="sink")
        workers = self._start_workers()
        stop = asyncio.create_task(self._stop.wait(), name="stop")
        failure: BaseException | None = None
        try:
            done, _ = await asyncio.wait(
                [stop, consume, sink, *workers], return_when=asyncio.FIRST_COMPLETED
            )
            failure = next((t.exception() for t in done if t is not stop and t.exception()), None)
            if failure is None:
                await self._drain(consume, sink)
        except BaseException as exc:
            failure = exc
        finally:
            await self._shutdown([stop, consume, sink, *workers], graceful=failure is None)
        if failure is not None:
            raise failure

    async def _open(self) -> None:
        cfg = self.config
        routed = declared_output_topics(self.codec)
        partitions = await asyncio.to_thread(
            ensure_topics,
            {"bootstrap.servers": cfg.bootstrap_servers, **cfg.admin_overrides},
            cfg.input_topic,
            [cfg.output_topic, *routed, cfg.resolved_dlq_topic],
            cfg.create_missing_topics,
            connect_timeout_s=cfg.kafka_connect_timeout_s,
        )
        await self._connect()
        self._writer = OutputWriter(
            self._sink,
            cfg.output_topic,
            cfg.resolved_dlq_topic,
            partitions[cfg.output_topic],
            cfg.output_partitioning,
            self.metrics,
            HeaderPolicy.of(cfg.header_allowlist, cfg.header_denylist),
            {topic: partitions[topic] for topic in routed},
        )
        if cfg.metrics_port is not None:
            self._operations = OperationsServer(
                self.metrics.registry, self.health, cfg.metrics_port
            )
            self.metrics_port = self._operations.port
        info = {
            "group": cfg.group_id,
            "instance": cfg.resolved_instance_id,
            "guarantee": cfg.guarantee,
            "input": cfg.input_topic,
            "output": cfg.output_topic,
            "dlq": cfg.resolved_dlq_topic,
            "metrics_port": self.metrics_port,
        }
        log_event(log, "stream started", **info)
        if self.on_ready is not None:
            self.on_ready(info)

    async def _connect(self) -> None:
        """New consumer and producer: initialise transactions, then subscribe."""
        cfg = self.config
        consumer = new_client(
            Consumer,
            kafka_io.consumer_settings(
                cfg.bootstrap_servers, cfg.group_id, cfg.group_instance_id, cfg.consumer_overrides
            ),
        )
        exactly_once = cfg.guarantee == "exactly-once"
        producer = new_client(
            Producer,
            kafka_io.producer_settings(
                cfg.bootstrap_servers,
                cfg.transactional_id if exactly_once else None,
                cfg.producer_overrides,
            ),
        )
        self._kafka: kafka_io.ConsumerThread = kafka_io.ConsumerThread(
            consumer, kafka_io.call_deadline(cfg.kafka_timeout_s)
        )
        self._sink: kafka_io.Sink = (
            kafka_io.TransactionalSink(producer, consumer, cfg.kafka_timeout_s)
            if exactly_once
            else kafka_io.AtLeastOnceSink(producer, consumer, cfg.kafka_timeout_s)
        )
        if getattr(self, "_writer", None) is not None:
            self._writer.sink = self._sink
        await self._kafka.call(self._sink.start)
        await self._kafka.call(
            consumer.subscribe,
            [cfg.input_topic],
            on_assign=self._callback(self._on_assign),
            on_revoke=self._callback(self._on_revoke),
            on_lost=self._callback(self._on_lost),
        )
        self._clients_ok = True

    def _callback(self, handler: RebalanceCallback) -> RebalanceCallback:
        """``handler`` for the current clients only: once they are replaced (or closing
        during a rebuild) their callbacks must not touch the book or the new sink."""
        generation = self._generation

        def callback(consumer: Consumer, partitions: list[KafkaTopicPartition]) -> None:
            if generation == self._generation:
                handler(consumer, partitions)

        return callback

    async def _rebuild_clients(self, reason: str) -> None:
        """Replace broken clients; resume from the committed offsets (see module doc, 6)."""
        cfg = self.config
        now = time.monotonic()
        self._rebuilds = [t for t in self._rebuilds if now - t < cfg.client_rebuild_window_s]
        self._rebuilds.append(now)
        if len(self._rebuilds) > cfg.max_client_rebuilds:
            raise FatalStreamError(
                f"{reason} (after {cfg.max_client_rebuilds} client rebuilds within "
                f"{cfg.client_rebuild_window_s:g} s)"
            )
        self.metrics.client_rebuilds.inc()
        log_event(
            log,
            "kafka clients failed; rebuilding them",
            logging.ERROR,
            reason=reason,
            last_call=getattr(self._sink, "step", "") or "-",
            owned=len(self.book),
            buffered=self.book.buffered,
        )
        self._committing = True  # nothing is produced until the new clients are ready
        self._generation += 1
        self._clients_ok = False
        self.health.joined = False  # not ready until the new consumer joins
        # Nothing uncommitted survives: the new consumer starts from the committed offsets.
        self.book.remove([state.key for state in self.book])
        self._paused.clear()
        await self._close_clients(graceful=False, discard=True)
        attempts = 0
        while self._consuming and not self._clients_ok:
            self.health.consume_round()  # retrying is progress: liveness holds
            attempts += 1
            try:
                await self._connect()
            except Exception as exc:  # e.g. no broker answers yet: init_transactions times out
                log_event(
                    log,
                    "kafka clients not ready",
                    logging.WARNING,
                    attempt=attempts,
                    error=str(exc)[:300],
                )
                self._generation += 1
                await self._close_clients(graceful=False, discard=True)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), min(5.0, 0.25 * 2**attempts))
        self._committing = False
        self._ready.set()
        if self._clients_ok:
            log_event(log, "kafka clients rebuilt", logging.WARNING, attempts=attempts)

    def _start_workers(self) -> list[asyncio.Task[None]]:
        cfg = self.config
        batcher = MicroBatcher(
            self._batch_queue,
            self._call_queue.put,
            cfg.max_batch_size,
            cfg.max_batch_delay_ms / 1000,
        )
        tasks = [asyncio.create_task(batcher.run(), name="batcher")]
        if self._operations is not None:  # someone may ask: beat and probe the model
            tasks.append(asyncio.create_task(self.health.watch(self._predictors), name="health"))
        tasks += [
            asyncio.create_task(self._decode_loop(), name=f"decode-{i}")
            for i in range(cfg.decode_concurrency)
        ]
        tasks += [
            asyncio.create_task(self._call_loop(), name=f"call-{i}")
            for i in range(cfg.max_in_flight)
        ]
        return tasks

    async def _drain(self, consume: asyncio.Task[None], sink: asyncio.Task[None]) -> None:
        """Graceful stop: no new records; finish, produce and commit what is in flight.

        Bounded: ``shutdown_timeout_s`` for the in-flight work, then :data:`FINAL_COMMIT_S`
        for the last commit; whatever is not committed by then is redone by the next owner.
        """
        started = time.monotonic()
        log_event(log, "stream stopping", buffered=self.book.buffered)
        self._consuming = False
        try:
            async with asyncio.timeout(self.config.shutdown_timeout_s + FINAL_COMMIT_S):
                await consume
                deadline = started + self.config.shutdown_timeout_s
                while self.book.buffered > 0 and time.monotonic() < deadline:
                    await asyncio.sleep(0.02)
                self._sinking = False
                self._ready.set()
                await sink
                await self._checkpoint()
        except TimeoutError:
            self._closed = True
            log_event(
                log,
                "stream drain abandoned",
                logging.WARNING,
                unfinished=self.book.buffered,
                seconds=round(time.monotonic() - started, 3),
            )
            return
        self._closed = True
        log_event(
            log,
            "stream drained",
            unfinished=self.book.buffered,
            seconds=round(time.monotonic() - started, 3),
        )

    async def _shutdown(self, tasks: list[asyncio.Task[Any]], graceful: bool) -> None:
        self._closed = True
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._close_clients(graceful)
        if self._operations is not None:
            await asyncio.to_thread(self._operations.close)
        log_event(log, "stream stopped", graceful=graceful)

    async def _close_clients(self, graceful: bool, discard: bool = False) -> None:
        """Close the current clients within ``CLOSE_TIMEOUT_S`` (abandoning a stuck call).

        ``discard``: the clients are being replaced; drop queued records instead of
        flushing them, and leave an open transaction to the next ``init_transactions``.
        """
        kafka = getattr(self, "_kafka", None)  # set by _connect
        sink = getattr(self, "_sink", None)
        if kafka is None or kafka.closed:
            return
        deadline = time.monotonic() + kafka_io.CLOSE_TIMEOUT_S
        steps: list[Callable[[float], Awaitable[None]]] = [kafka.close]
        if sink is not None:
            step = sink.discard if discard else sink.close
            steps.insert(0, lambda left: kafka.call(step, deadline_s=left))
        for close in steps:  # each within what is left (a stuck thread makes both time out)
            try:
                await close(max(0.1, deadline - time.monotonic()))
            except Exception as exc:  # closing after a failure must not hide the failure
                log_event(log, "close failed", logging.WARNING, error=str(exc), graceful=graceful)

    # ------------------------------------------------------------------ consuming

    async def _consume_loop(self) -> None:
        """Owns the consumer thread's time: consume, seek, pause, checkpoint, in turn."""
        interval = self.config.commit_interval_ms / 1000
        next_checkpoint = time.monotonic() + interval
        next_lag_update = 0.0
        while self._consuming:
            self.health.consume_round()
            try:
                await self._apply_seeks()
                await self._apply_flow_control()
                if self.book.buffered >= self.config.max_buffered_records:
                    # Not pause(): librdkafka drops a paused partition's prefetched records,
                    # and fetching them again costs more than waiting for the pipeline here.
                    await asyncio.sleep(BUFFER_FULL_WAIT_S)
                    messages = []
                else:
                    # wait no longer than the next checkpoint: on a quiet topic a longer
                    # wait would hold finished outputs (exactly-once: invisible until the
                    # commit) past the commit interval
                    wait_s = min(0.1, max(0.0, next_checkpoint - time.monotonic()))
                    messages = await self._kafka.consume(self.config.consume_batch_size, wait_s)
                self._intake_batch(messages)
                await self._release_held()
                if time.monotonic() >= next_checkpoint:
                    await self._checkpoint()
                    next_checkpoint = time.monotonic() + interval
                if time.monotonic() >= next_lag_update:
                    await self._kafka.call(self._update_lag)
                    next_lag_update = time.monotonic() + 1.0
            except FatalStreamError as exc:
                await self._rebuild_clients(exc.message)
            except KafkaException as exc:
                error = kafka_io.kafka_error(exc)
                if error is not None and kafka_io.is_fatal(error):
                    await self._rebuild_clients(f"consumer failed: {error.str()}")
                    continue
                # e.g. pause() or a lag lookup refused while a broker is away: the step is
                # retried next round (nothing changed state), the processor does not die.
                log_event(log, "consumer call failed", logging.WARNING, error=str(exc))
                await asyncio.sleep(0.1)
        self.health.consume_stopped()

    def _intake_batch(self, messages: list[Message]) -> None:
        """Queue a consumed batch; a codec with ``decode_batch`` decodes it right here in
        one call (no decode task or queue hop per record), others via the decode workers."""
        works: list[Work] = []
        intake = self.book.intake
        received = time.perf_counter()
        try:
            for message in messages:
                if message.error() is not None:
                    self._consumer_error(message)
                    continue
                work = intake(input_record(message), received)
                if work is not None:
                    works.append(work)
        finally:  # a fatal consumer error mid-batch: what came before it is still queued
            self._dispatch(works)

    def _dispatch(self, works: list[Work]) -> None:
        if not works:
            return
        self._records_in.inc(len(works))
        if self._prepare is not None:
            self._held += works  # decoded by _release_held once the codec is prepared
            return
        decode_stacked = self._decode_stacked
        if decode_stacked is None:
            for work in works:
                self._decode_queue.put_nowait(work)
            return
        self._queue_decoded(works, decode_stacked([w.record for w in works]))

    async def _release_held(self) -> None:
        """Prepare the codec for the held works (resolve their schemas), then decode them.

        A dependency the records need but cannot reach (the schema registry) is not the
        records' fault: they stay held, in order, consumption pauses (flow control),
        readiness names the dependency, and the prepare is retried with a backoff."""
        if not self._held or time.monotonic() < self._held_retry_at:
            return
        assert self._prepare is not None
        works = [work for work in self._held if not work.stale]
        self._held = []
        if not works:
            return
        try:
            await self._prepare([work.record for work in works])
        except DependencyUnavailable as exc:
            self._held = works + self._held  # consumed meanwhile: after them, in order
            self._hold_for(exc)
            return
        self._dependency_back()
        decode_stacked = self._decode_stacked
        assert decode_stacked is not None, "a codec with prepare has decode_stacked"
        self._queue_decoded(works, decode_stacked([work.record for work in works]))

    def _hold_for(self, exc: DependencyUnavailable) -> None:
        self._held_backoff_s = min(max(2 * self._held_backoff_s, HOLD_BACKOFF_S), HOLD_MAX_S)
        self._held_retry_at = time.monotonic() + self._held_backoff_s
        if self.health.dependency_problem is None:
            log_event(
                log,
                "dependency unavailable: holding records",
                logging.WARNING,
                dependency=exc.dependency,
                error=exc.reason,
                held=len(self._held),
            )
        self.health.dependency_problem = str(exc)

    def _dependency_back(self) -> None:
        self._held_backoff_s = 0.0
        if self.health.dependency_problem is not None:
            log_event(log, "dependency available again", logging.INFO, held=len(self._held))
            self.health.dependency_problem = None

    def _queue_decoded(self, works: list[Work], batch: StackedBatch) -> None:
        """Failed records are finished (DLQ); the rest go to the batcher as chunks: one
        when the codec stacked their inputs, else one per run of stackable records."""
        decoded_works: list[Work] = []
        for work, decoded in zip(works, batch.records, strict=True):
            if isinstance(decoded, RecordError):
                self._finish_failed(work, decoded)
            else:
                work.decoded = decoded
                decoded_works.append(work)
        if not decoded_works:
            return
        if batch.stacked is None:
            for chunk in chunks_of(decoded_works):
                self._batch_queue.put_nowait(chunk)
            return
        counts = [batch.rows] * len(decoded_works)
        self._batch_queue.put_nowait(Chunk.of(decoded_works, batch.stacked, counts))

    def _consumer_error(self, message: Message) -> None:
        error = message.error()
        assert error is not None
        if kafka_io.is_fatal(error):  # never only a warning: the consumer is dead
            raise FatalStreamError(f"consumer failed: {error.str()}")
        if error.code() != KafkaError._PARTITION_EOF:
            log_event(log, "consumer error", logging.WARNING, error=error.str())

    async def _apply_seeks(self) -> None:
        for state in self.book.seeks_due():
            assert state.seek_to is not None
            target = KafkaTopicPartition(state.topic, state.partition, state.seek_to)
            try:
                await self._kafka.call(self._kafka.consumer.seek, target)
            except Exception as exc:  # e.g. not fetching yet: try again next round
                log_event(log, "seek failed", logging.WARNING, partition=state.key, error=str(exc))
                continue
            log_event(
                log,
                "rewound",
                logging.INFO,
                topic=state.topic,
                partition=state.partition,
                offset=state.seek_to,
            )
            state.seek_to = None

    async def _apply_flow_control(self) -> None:
        """Pause every owned partition while the model is unreachable (breaker open)."""
        reason = None
        if self.invoker.blocked:
            reason = "breaker-open"
        elif self.health.dependency_problem is not None:
            reason = "dependency-unavailable"
        owned = {state.key for state in self.book}
        if reason is not None:
            newly = owned - self._paused
            if newly:
                await self._kafka.call(self._kafka.consumer.pause, _tps(newly))
                if not self._paused:
                    log_event(
                        log,
                        "consumption paused",
                        logging.WARNING,
                        reason=reason,
                        buffered=self.book.buffered,
                    )
                    self.metrics.pauses.labels(reason).inc()
                    self._pause_reason = reason
                self._paused |= newly
        elif self._paused:
            resumed = self._paused & owned
            if resumed:
                await self._kafka.call(self._kafka.consumer.resume, _tps(resumed))
            self._paused.clear()
            log_event(
                log,
                "consumption resumed",
                logging.INFO,
                after=self._pause_reason,
                buffered=self.book.buffered,
            )
        self.metrics.paused.set(1 if self._paused else 0)
        self.metrics.buffered.set(self.book.buffered)

    def _update_lag(self) -> None:
        """Runs on the consumer thread: high watermark (cached) minus next offset."""
        for state in self.book:
            if state.next_offset is None:
                continue
            tp = KafkaTopicPartition(state.topic, state.partition)
            _low, high = self._kafka.consumer.get_watermark_offsets(tp, cached=True)
            if high >= 0:
                self.metrics.consumer_lag.labels(state.topic, str(state.partition)).set(
                    max(0, high - state.next_offset)
                )

    # ------------------------------------------------------------------ rebalancing

    def _on_loop(self, coroutine: Any) -> Any:
        """From the consumer thread: run a coroutine on the loop and wait for its result."""
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def _on_assign(self, _consumer: Consumer, partitions: list[KafkaTopicPartition]) -> None:
        self.health.joined = True  # called on joining, even with no partitions
        self._on_loop(self._assigned(partitions))

    def _on_revoke(self, _consumer: Consumer, partitions: list[KafkaTopicPartition]) -> None:
        """Consumer thread, inside ``consume()``: commit what the revoked partitions produced.

        Their queued works are dropped; the next owner redoes them from the committed offset.
        Committing right here, on this thread, is what keeps the group metadata reachable.
        """
        if not partitions:
            return
        offsets = self._on_loop(self._begin_revoke(partitions))
        if offsets is not None:
            self._commit_on_consumer_thread(offsets)
        self._on_loop(self._rebalanced(partitions, "revoked"))

    def _on_lost(self, _consumer: Consumer, partitions: list[KafkaTopicPartition]) -> None:
        """Lost partitions may already be owned elsewhere: the open transaction must go."""
        if not partitions:
            return
        abort = self.config.guarantee == "exactly-once" and not self._closed
        if abort:
            self._on_loop(self._hold_output())
            self._sink.abort()
        self._on_loop(self._lost(partitions, rewind=abort))

    def _commit_on_consumer_thread(self, offsets: kafka_io.Offsets) -> None:
        try:
            committed = self._sink.commit(offsets)
        except CheckpointAborted as exc:
            self._on_loop(self._after_checkpoint(offsets, None, exc.message))
        else:
            self._on_loop(self._after_checkpoint(offsets, committed, None))

    async def _assigned(self, partitions: list[KafkaTopicPartition]) -> None:
        if partitions:
            self.book.assign((tp.topic, tp.partition) for tp in partitions)
            await self._rebalanced(partitions, "assigned")

    async def _begin_revoke(self, partitions: list[KafkaTopicPartition]) -> kafka_io.Offsets | None:
        """Emit what is ready, snapshot offsets, forget the revoked partitions."""
        keys = [(tp.topic, tp.partition) for tp in partitions]
        offsets = None
        if not self._closed:
            self._committing = True
            self._emit_ready()
            offsets = self.book.offsets_to_commit()
        self.book.remove(keys)
        self._paused.difference_update(keys)
        return offsets

    async def _hold_output(self) -> None:
        self._committing = True  # no produce() while the consumer thread ends the transaction

    async def _lost(self, partitions: list[KafkaTopicPartition], rewind: bool) -> None:
        keys = [(tp.topic, tp.partition) for tp in partitions]
        self.book.remove(keys)
        self._paused.difference_update(keys)
        if rewind:
            self._rewind("partitions lost")
        self._committing = False
        self._ready.set()
        await self._rebalanced(partitions, "lost")

    async def _rebalanced(self, partitions: list[KafkaTopicPartition], kind: str) -> None:
        self.metrics.rebalances.labels(kind).inc()
        log_event(
            log,
            f"partitions {kind}",
            partitions=kafka_io.describe_partitions(partitions),
            owned=len(self.book),
        )

    # ------------------------------------------------------------------ work

    async def _decode_loop(self) -> None:
        while True:
            work = await self._decode_queue.get()
            if work.stale:
                continue
            try:
                work.decoded = await self.codec.decode(work.record)
            except RecordError as exc:
                self._finish_failed(work, exc)
                continue
            except Exception as exc:
                name = type(exc).__name__
                self._finish_failed(work, RecordError("decode", str(exc) or name, name))
                continue
            if not work.stale:
                self._batch_queue.put_nowait(Chunk.of_works([work]))

    async def _call_loop(self) -> None:
        while True:
            chunks = [c for c in map(Chunk.live, await self._call_queue.get()) if c is not None]
            if not chunks:
                continue
            batch = merge(chunks)
            self.metrics.batch_size.observe(len(batch.works))
            self.metrics.in_flight.inc()
            try:
                parts = await self.invoker.predict_rows(
                    batch.inputs, batch.counts, self.codec.signature_name
                )
            finally:
                self.metrics.in_flight.dec()
            start = 0
            for part in parts:
                self._finish(batch.works[start : start + part.records], part)
                start += part.records
            self._ready.set()

    def _finish(self, works: list[Work], part: Part) -> None:
        """Encode one part of a model call's outputs (one call) and finish its works."""
        if part.error is not None or part.outputs is None:
            error = part.error or RecordError("predict", "no output rows")
            for work in works:
                work.fail(error)
            return
        now = time.perf_counter()
        decoded = [work.decoded for work in works if work.decoded is not None]
        latencies = [(now - work.received) * 1000 for work in works]
        try:
            encoded = self._encode_batch(
                decoded,
                part.outputs,
                part.counts,
                part.model_name,
                part.model_version,
                latencies,
                part.mode,
            )
        except Exception as exc:  # a codec's own encode_batch failed as a whole
            name = type(exc).__name__
            encoded = [RecordError("encode", str(exc) or name, name)] * len(works)
        name, version, mode = part.model_name, part.model_version, part.mode
        for work, value in zip(works, encoded, strict=True):
            if isinstance(value, RecordError):
                work.fail(value)
            else:
                work.decoded = None  # free the inputs (images) early
                work.succeed(value, mode, name, version)

    def _finish_failed(self, work: Work, error: RecordError) -> None:
        work.fail(error)
        self._ready.set()

    # ------------------------------------------------------------------ producing

    async def _sink_loop(self) -> None:
        """Produce finished outputs as they become ready (never during a commit)."""
        while self._sinking:
            self._ready.clear()
            if self._committing or not self.book.has_ready():
                await self._ready.wait()
                continue
            self._emit_ready()

    def _emit_ready(self) -> None:
        now_ms = time.time() * 1000
        self._writer.write_all(self.book.pop_ready(), now_ms)
        self._sink.poll()

    async def _checkpoint(self) -> None:
        """Produce what is ready, then commit it with its offsets on the consumer thread.

        Called only by the consume loop (or the drain after it), so it never overlaps a
        ``consume()`` and its rebalance callbacks; ``_committing`` keeps the sink loop from
        producing into a transaction that is being committed.
        """
        if not self._clients_ok:
            return  # being rebuilt: nothing uncommitted is left to commit
        self._committing = True
        try:
            self._emit_ready()
            offsets = self.book.offsets_to_commit()
            try:
                committed = await self._kafka.call(self._sink.commit, offsets)
            except CheckpointAborted as exc:
                await self._after_checkpoint(offsets, None, exc.message)
            else:
                await self._after_checkpoint(offsets, committed, None)
        finally:
            self._committing = False
            self._ready.set()

    async def _after_checkpoint(
        self, offsets: kafka_io.Offsets, committed: bool | None, aborted: str | None
    ) -> None:
        self._committing = False
        self._ready.set()
        if aborted is not None:
            self.metrics.commits.labels("aborted").inc()
            self._rewind(aborted)
        elif committed and offsets:
            self.book.mark_committed(offsets)
            self.metrics.commits.labels("committed").inc()

    def _rewind(self, reason: str) -> None:
        rewound = self.book.rewind_all()
        if not rewound:
            return
        log_event(
            log,
            "rewinding to committed offsets",
            logging.WARNING,
            reason=reason,
            partitions=",".join(f"{s.topic}[{s.partition}]@{s.seek_to}" for s in rewound),
        )


def input_record(message: Message) -> InputRecord:
    """A consumed message (without error) as the client-independent :class:`InputRecord`."""
    topic, partition, offset = message.topic(), message.partition(), message.offset()
    assert topic is not None and partition is not None and offset is not None
    timestamp_type, timestamp = message.timestamp()
    value, key, headers = message.value(), message.key(), message.headers()
    return InputRecord(
        topic,
        partition,
        offset,
        key.encode() if isinstance(key, str) else key,
        value.encode() if isinstance(value, str) else value,
        normalise_headers(headers) if headers else [],
        None if timestamp_type == TIMESTAMP_NOT_AVAILABLE else timestamp,
    )


HeaderValue = str | bytes | None


def normalise_headers(
    headers: list[tuple[str, HeaderValue]] | dict[str, HeaderValue] | None,
) -> list[tuple[str, bytes | None]]:
    if not headers:
        return []
    items = list(headers.items()) if isinstance(headers, dict) else list(headers)
    return [(name, v.encode() if isinstance(v, str) else v) for name, v in items]


def _tps(keys: set[tuple[str, int]]) -> list[KafkaTopicPartition]:
    return [KafkaTopicPartition(topic, partition) for topic, partition in sorted(keys)]
