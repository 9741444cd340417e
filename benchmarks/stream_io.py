"""Kafka plumbing for ``python -m benchmarks stream``: topics, producing, reading back, load shapes.

Every benchmark topic is created with ``message.timestamp.type=LogAppendTime``: each
record's timestamp is the broker's clock when it was appended to the log, on the input and
on the output side alike, so end-to-end latency is one clock minus the same clock.

Load shapes:

- :func:`produce_all` — a backlog, produced before the processor starts (throughput);
- :func:`closed_loop` — at most ``window`` records produced and not yet output (latency);
- :class:`PacedProducer` — a steady rate in a thread (the outage timeline).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from streamserve.kafka.admin import Kafka, client_settings

TOPIC_CONFIG = {"message.timestamp.type": "LogAppendTime"}
Progress = Callable[[int], None]


@dataclass(frozen=True)
class BenchRecord:
    partition: int
    key: bytes
    value: bytes


@dataclass(frozen=True)
class ReadRecord:
    key: bytes | None
    partition: int
    offset: int
    timestamp_ms: int
    received_ms: float
    value: bytes | None = None


def create_topics(bootstrap_servers: Kafka, names: Sequence[str], partitions: int) -> None:
    from streamserve.kafka import admin

    admin.create_topics(bootstrap_servers, names, partitions, TOPIC_CONFIG)


def _producer(bootstrap_servers: Kafka, linger_ms: int) -> Producer:
    return Producer(
        {
            **client_settings(bootstrap_servers),
            "enable.idempotence": True,
            "linger.ms": linger_ms,
            "batch.num.messages": 10_000,
            "queue.buffering.max.messages": 1_000_000,
            "compression.type": "lz4",
        }
    )


def _produce(producer: Producer, topic: str, record: BenchRecord) -> None:
    while True:
        try:
            producer.produce(topic, record.value, record.key, partition=record.partition)
            return
        except BufferError:
            producer.poll(0.05)


def produce_all(
    bootstrap_servers: Kafka, topic: str, records: Sequence[BenchRecord], timeout_s: float = 120.0
) -> None:
    """Produce every record (idempotent producer) and wait until all are acknowledged."""
    producer = _producer(bootstrap_servers, linger_ms=20)
    for i, record in enumerate(records):
        _produce(producer, topic, record)
        if i % 10_000 == 0:
            producer.poll(0)
    remaining = producer.flush(timeout_s)
    if remaining:
        raise RuntimeError(f"{remaining} records to {topic} not acknowledged in {timeout_s} s")


def _reader(bootstrap_servers: Kafka, topic: str) -> tuple[Consumer, list[int]]:
    consumer = Consumer(
        {
            **client_settings(bootstrap_servers),
            "group.id": f"bench-reader-{time.monotonic_ns()}",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            "fetch.wait.max.ms": 10,
            "log_level": 3,
        }
    )
    partitions = sorted(consumer.list_topics(topic, timeout=10).topics[topic].partitions)
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
    return consumer, partitions


def _read_record(message: Any, keep_value: bool) -> ReadRecord:
    return ReadRecord(
        message.key(),
        message.partition(),
        message.offset(),
        message.timestamp()[1],
        time.time() * 1000,
        message.value() if keep_value else None,
    )


def read_all(
    bootstrap_servers: Kafka,
    topic: str,
    expected: int,
    timeout_s: float = 60.0,
    keep_values: bool = False,
    quiet_s: float = 0.5,
) -> list[ReadRecord]:
    """Every committed record of ``topic``: at least ``expected`` unless ``timeout_s`` passes,
    then on until nothing new arrives for ``quiet_s`` (so duplicates would show)."""
    consumer, _ = _reader(bootstrap_servers, topic)
    found: list[ReadRecord] = []
    try:
        deadline = time.monotonic() + timeout_s
        last_new = time.monotonic()
        while time.monotonic() < deadline:
            if len(found) >= expected and time.monotonic() - last_new > quiet_s:
                break
            for message in consumer.consume(10_000, 0.1):
                if not message.error():
                    found.append(_read_record(message, keep_values))
                    last_new = time.monotonic()
        return found
    finally:
        consumer.close()


class CommittedWatcher:
    """Reads one group's committed offsets repeatedly with one long-lived client."""

    def __init__(self, bootstrap_servers: Kafka, group_id: str, topic: str, partitions: int):
        self._consumer = Consumer(
            {
                **client_settings(bootstrap_servers),
                "group.id": group_id,
                "enable.auto.commit": False,
                "log_level": 3,
            }
        )
        self._tps = [TopicPartition(topic, p) for p in range(partitions)]

    def offsets(self) -> dict[int, int]:
        tps = self._consumer.committed(self._tps, timeout=10)
        return {tp.partition: max(0, tp.offset) for tp in tps}

    def close(self) -> None:
        self._consumer.close()


class OutputWatcher:
    """A thread reading an output topic (read_committed) as records arrive."""

    def __init__(self, bootstrap_servers: Kafka, topic: str, keep_values: bool = False) -> None:
        self._consumer, _ = _reader(bootstrap_servers, topic)
        self.keep_values = keep_values
        self.records: list[ReadRecord] = []
        self.changed = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="output-watcher")
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                batch = [
                    _read_record(m, self.keep_values)
                    for m in self._consumer.consume(1000, 0.05)
                    if not m.error()
                ]
                if batch:
                    with self.changed:
                        self.records.extend(batch)
                        self.changed.notify_all()
        finally:
            self._consumer.close()

    @property
    def count(self) -> int:
        return len(self.records)

    def wait_for(self, count: int, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        with self.changed:
            while len(self.records) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self.changed.wait(min(remaining, 0.1))
        return True

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)


def closed_loop(
    bootstrap_servers: Kafka,
    topic: str,
    records: Sequence[BenchRecord],
    watcher: OutputWatcher,
    window: int,
    timeout_s: float,
    progress: Progress | None = None,
) -> int:
    """Keep at most ``window`` records produced but not yet output; return how many were
    produced (all of them unless ``timeout_s`` ran out)."""
    producer = _producer(bootstrap_servers, linger_ms=0)
    baseline = watcher.count
    deadline = time.monotonic() + timeout_s
    produced = 0
    reported = 0
    while time.monotonic() < deadline:
        done = watcher.count - baseline
        if progress is not None and done > reported:
            progress(done - reported)
            reported = done
        if done >= len(records):
            break
        while produced < len(records) and produced - done < window:
            _produce(producer, topic, records[produced])
            produced += 1
        producer.poll(0)
        watcher.wait_for(baseline + done + 1, 0.05)
    producer.flush(30)
    return produced


class PacedProducer:
    """Produces ``records`` at ``rate`` per second in a thread (catching up if it falls behind)."""

    def __init__(
        self, bootstrap_servers: Kafka, topic: str, records: Sequence[BenchRecord], rate: float
    ) -> None:
        self.topic = topic
        self.records = records
        self.rate = rate
        self.produced = 0
        self.started_at = 0.0
        self._producer = _producer(bootstrap_servers, linger_ms=5)
        self._thread = threading.Thread(target=self._run, daemon=True, name="paced-producer")

    def start(self) -> None:
        self.started_at = time.time()
        self._thread.start()

    def _run(self) -> None:
        began = time.monotonic()
        for i, record in enumerate(self.records):
            delay = began + i / self.rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            _produce(self._producer, self.topic, record)
            self.produced = i + 1
            self._producer.poll(0)
        self._producer.flush(30)

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)
