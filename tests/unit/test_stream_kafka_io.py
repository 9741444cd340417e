"""How the sinks classify Kafka failures, and the consumer thread's deadlines (no broker)."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
from typing import Any, cast

import pytest
from confluent_kafka import KafkaError, KafkaException

from streamserve.stream.kafka_io import (
    AtLeastOnceSink,
    CheckpointAborted,
    ConsumerThread,
    ConsumerThreadStuck,
    FatalStreamError,
    Sink,
    TransactionalSink,
    is_fatal,
    producer_settings,
)
from streamserve.stream.processor import ProcessorConfig


class _Producer:
    """Records transactional calls; raises what a test plans for a method name."""

    def __init__(self, **failures: KafkaError) -> None:
        self.failures = failures
        self.calls: list[str] = []

    def _call(self, name: str) -> None:
        self.calls.append(name)
        if name in self.failures:
            raise KafkaException(self.failures[name])

    def init_transactions(self, timeout: float) -> None:
        self._call("init_transactions")

    def begin_transaction(self) -> None:
        self._call("begin_transaction")

    def produce(self, *args: Any, **kwargs: Any) -> None:
        self._call("produce")

    def poll(self, timeout: float) -> int:
        self._call("poll")
        return 0

    def flush(self, timeout: float) -> int:
        self._call("flush")
        return 0

    def send_offsets_to_transaction(self, *args: Any) -> None:
        self._call("send_offsets_to_transaction")

    def commit_transaction(self, timeout: float) -> None:
        self._call("commit_transaction")

    def abort_transaction(self, timeout: float) -> None:
        self._call("abort_transaction")


class _Consumer:
    def consumer_group_metadata(self) -> object:
        return object()


def _sink(**failures: KafkaError) -> tuple[TransactionalSink, _Producer]:
    producer = _Producer(**failures)
    return TransactionalSink(cast(Any, producer), cast(Any, _Consumer()), timeout_s=1.0), producer


OFFSETS = {("in", 0): 10}


def test_fatal_means_fatal_flag_or_the_fatal_event() -> None:
    assert is_fatal(KafkaError(KafkaError._FATAL, "Fatal error: fenced"))
    assert is_fatal(KafkaError(KafkaError._FENCED, "fenced", fatal=True))
    assert not is_fatal(KafkaError(KafkaError._TIMED_OUT, "slow", retriable=True))


def test_a_timed_out_commit_is_aborted_and_redone() -> None:
    timeout = KafkaError(KafkaError._TIMED_OUT, "no broker", retriable=True)
    sink, producer = _sink(send_offsets_to_transaction=timeout)
    with pytest.raises(CheckpointAborted):
        sink.commit(OFFSETS)
    assert producer.calls[-1] == "abort_transaction"


def test_an_abort_that_fails_rebuilds_the_clients() -> None:
    timeout = KafkaError(KafkaError._TIMED_OUT, "no broker", retriable=True)
    sink, _producer = _sink(send_offsets_to_transaction=timeout, abort_transaction=timeout)
    with pytest.raises(FatalStreamError):
        sink.commit(OFFSETS)


def test_an_abort_refused_for_its_state_is_not_taken_for_no_transaction() -> None:
    """After a commit that may be under way, only a completed abort allows a rewind."""
    timeout = KafkaError(KafkaError._TIMED_OUT, "slow", retriable=True)
    state = KafkaError(KafkaError._STATE, "commit in progress")
    sink, _producer = _sink(commit_transaction=timeout, abort_transaction=state)
    with pytest.raises(FatalStreamError):
        sink.commit(OFFSETS)


def test_a_fatal_commit_error_is_not_aborted() -> None:
    fenced = KafkaError(KafkaError._FENCED, "fenced", fatal=True)
    sink, producer = _sink(commit_transaction=fenced)
    with pytest.raises(FatalStreamError):
        sink.commit(OFFSETS)
    assert "abort_transaction" not in producer.calls


def test_a_transaction_broken_while_producing_is_aborted_at_the_commit() -> None:
    sink, producer = _sink(produce=KafkaError(KafkaError._STATE, "abortable error"))
    sink.produce("out", b"1", None)
    sink.produce("out", b"2", None)  # dropped: the transaction will be aborted anyway
    assert producer.calls.count("produce") == 1
    with pytest.raises(CheckpointAborted):
        sink.commit(OFFSETS)
    assert producer.calls[-1] == "abort_transaction"


def test_a_fatal_produce_error_rebuilds_the_clients() -> None:
    sink, _producer = _sink(produce=KafkaError(KafkaError._FATAL, "Fatal error"))
    sink.produce("out", b"1", None)
    with pytest.raises(FatalStreamError):
        sink.commit(OFFSETS)


@pytest.mark.parametrize("sink_type", [TransactionalSink, AtLeastOnceSink])
def test_a_fatal_error_raised_by_poll_rebuilds_the_clients(sink_type: type[Sink]) -> None:
    producer = _Producer(poll=KafkaError(KafkaError._FENCED, "fenced", fatal=True))
    sink = sink_type(cast(Any, producer), cast(Any, _Consumer()), 1.0)
    sink.poll()  # the sink loop must not die of it
    sink.produce("out", b"1", None)  # dropped: the clients are rebuilt anyway
    assert "produce" not in producer.calls
    with pytest.raises(FatalStreamError):
        sink.commit(OFFSETS)


def test_a_record_error_is_the_callers() -> None:
    sink, _producer = _sink(produce=KafkaError(KafkaError.MSG_SIZE_TOO_LARGE, "too large"))
    with pytest.raises(KafkaException):
        sink.produce("out", b"1", None)
    assert sink.broken is None


def test_no_open_transaction_means_no_abort_call() -> None:
    sink, producer = _sink()
    sink.abort()
    assert producer.calls == []


class _BlockingConsumer:
    def __init__(self) -> None:
        self.release = threading.Event()

    def close(self) -> None:
        self.release.wait(10)

    def stuck(self) -> int:
        self.release.wait(10)
        return 1


def test_consumer_calls_and_close_are_bounded() -> None:
    consumer = _BlockingConsumer()
    thread = ConsumerThread(cast(Any, consumer))

    async def scenario() -> None:
        with pytest.raises(ConsumerThreadStuck):
            await thread.call(consumer.stuck, deadline_s=0.05)
        with pytest.raises(ConsumerThreadStuck):
            await thread.close(deadline_s=0.05)

    try:
        asyncio.run(scenario())
        assert thread.closed
    finally:
        consumer.release.set()


def test_rebuilt_clients_keep_the_transactional_id() -> None:
    """Each rebuild reads it again: the same id (per process without --instance-id) makes the
    new producer's init_transactions fence the old one and abort what it left open."""
    config = ProcessorConfig("kafka:9092", "in", "out", "g")
    per_process = f"streamserve-g-{socket.gethostname()}-{os.getpid()}"
    assert config.transactional_id == config.transactional_id == per_process


def test_a_transaction_left_open_under_another_id_is_bounded_by_its_timeout() -> None:
    """A restarted process without --instance-id gets a new id; the coordinator aborts the
    old one's open transaction once ``transaction.timeout.ms`` passes."""
    settings = producer_settings("kafka:9092", "streamserve-g-host-1")
    assert settings["transaction.timeout.ms"] == 30_000
