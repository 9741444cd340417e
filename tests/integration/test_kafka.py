"""The project's own Apache Kafka broker, exercised by real clients (confluent-kafka, kcat, CLI)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaError, Producer

from streamserve.kafka import admin, process
from streamserve.waiting import wait_until

pytestmark = pytest.mark.integration

RECORDS = 10_000
ABORTED = 500


def _transactional_producer(bootstrap: str, transactional_id: str | None = None) -> Producer:
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "transactional.id": transactional_id or f"txn-{uuid.uuid4().hex}",
            "linger.ms": 5,
        }
    )
    producer.init_transactions(30)
    return producer


def _produce_in_transaction(
    producer: Producer, topic: str, values: list[bytes], commit: bool
) -> None:
    producer.begin_transaction()
    for index, value in enumerate(values):
        producer.produce(topic, key=str(index).encode(), value=value)
        producer.poll(0)
    if commit:
        producer.commit_transaction(60)
    else:
        producer.flush(60)  # make sure the records reach the log before the abort marker
        producer.abort_transaction(60)


def _read_all(bootstrap: str, topic: str, partitions: int, isolation: str) -> list[bytes]:
    """Every record up to the end of each partition as seen under ``isolation``."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"g-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "isolation.level": isolation,
            "enable.partition.eof": True,
        }
    )
    consumer.subscribe([topic])
    values: list[bytes] = []
    at_end: set[int] = set()
    try:
        while len(at_end) < partitions:
            message = consumer.poll(30)
            assert message is not None, f"no record or EOF within 30 s; got {len(values)}"
            if message.error():
                assert message.error().code() == KafkaError._PARTITION_EOF, message.error()
                at_end.add(message.partition())
                continue
            at_end.discard(message.partition())
            values.append(message.value())
    finally:
        consumer.close()
    return values


def test_transaction_of_10000_records_is_read_back_exactly_with_read_committed(
    kafka_bootstrap: str, topic_factory: Callable[..., str]
) -> None:
    topic = topic_factory(partitions=3, prefix="txn")
    producer = _transactional_producer(kafka_bootstrap)
    aborted = [f"aborted-{i}".encode() for i in range(ABORTED)]
    committed = [f"committed-{i}".encode() for i in range(RECORDS)]

    _produce_in_transaction(producer, topic, aborted, commit=False)
    _produce_in_transaction(producer, topic, committed, commit=True)

    seen = _read_all(kafka_bootstrap, topic, partitions=3, isolation="read_committed")
    assert len(seen) == RECORDS
    assert sorted(seen) == sorted(committed)
    # The aborted records really are in the log: only the isolation level hides them.
    everything = _read_all(kafka_bootstrap, topic, partitions=3, isolation="read_uncommitted")
    assert sorted(everything) == sorted(committed + aborted)


def test_the_same_transactional_id_aborts_what_its_predecessor_left_open(
    kafka_bootstrap: str, topic_factory: Callable[..., str]
) -> None:
    """What the stream processor relies on when it rebuilds its clients (it keeps its
    transactional.id): the new producer's init_transactions aborts the old producer's open
    transaction, so read_committed readers are no longer held back by it."""
    topic = topic_factory(partitions=2, prefix="reinit")
    transactional_id = f"txn-{uuid.uuid4().hex}"
    abandoned = _transactional_producer(kafka_bootstrap, transactional_id)
    abandoned.begin_transaction()
    abandoned.produce(topic, b"left open", partition=0)
    assert abandoned.flush(30) == 0
    assert admin.unstable_partitions(kafka_bootstrap, topic) == {0: (0, 1)}

    _transactional_producer(kafka_bootstrap, transactional_id)  # the rebuilt client

    wait_until(
        lambda: not admin.unstable_partitions(kafka_bootstrap, topic), 30, "a stable partition 0"
    )
    assert _read_all(kafka_bootstrap, topic, partitions=2, isolation="read_committed") == []


def test_kcat_lists_the_broker_and_topics(
    kafka_bootstrap: str, topic_factory: Callable[..., str]
) -> None:
    kcat = shutil.which("kcat")
    if kcat is None:
        pytest.skip("kcat is not installed (apt-get install kcat)")
    topic = topic_factory(partitions=2, prefix="kcat")
    result = subprocess.run(
        [kcat, "-L", "-b", kafka_bootstrap, "-m", "10"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "1 brokers:" in result.stdout
    assert f"broker 1 at {kafka_bootstrap}" in result.stdout
    assert f'topic "{topic}" with 2 partitions' in result.stdout


def _cli(*args: str, env: dict[str, str], check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "streamserve", "kafka", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    if check:
        assert result.returncode == 0, result.stdout + result.stderr
    return result


def test_cli_start_status_create_topic_stop_keeps_data_dir(tmp_path: Path) -> None:
    env = {**os.environ, "STREAMSERVE_RUN_DIR": str(tmp_path / "run")}
    data_dir = tmp_path / "data"
    pids: list[int] = []
    try:
        for round_number in (1, 2):
            started = _cli("start", "--data-dir", str(data_dir), env=env)
            bootstrap = started.stdout.strip().splitlines()[-1]
            pids.append(int((tmp_path / "run" / "kafka.pid").read_text()))
            status = _cli("status", env=env)
            assert status.stdout.strip().splitlines()[-1] == bootstrap
            if round_number == 1:
                _cli("create-topic", "kept", "--partitions", "2", env=env)
            else:  # the topic survived the restart on the same data dir
                assert "kept" in admin.list_topics(bootstrap)
            _cli("stop", env=env)
            assert not process.pid_alive(pids[-1])
            assert _cli("status", env=env, check=False).returncode == 3
    finally:
        _cli("stop", env=env, check=False)
    assert (data_dir / "kafka.log").is_file()
    assert not any(process.pid_alive(pid) for pid in pids)


def test_cli_default_data_dir_is_removed_on_stop(tmp_path: Path) -> None:
    env = {**os.environ, "STREAMSERVE_RUN_DIR": str(tmp_path / "run")}
    try:
        _cli("start", env=env)
        import json

        state = json.loads((tmp_path / "run" / "kafka.json").read_text())
        assert state["owns_data_dir"] is True
        assert Path(state["data_dir"]).is_dir()
    finally:
        _cli("stop", env=env)
    assert not Path(state["data_dir"]).exists()
    assert not process.pid_alive(state["pid"])


def test_cli_cluster_of_three_status_survives_a_node_and_stop_ends_all(tmp_path: Path) -> None:
    import json
    import signal

    env = {**os.environ, "STREAMSERVE_RUN_DIR": str(tmp_path / "run")}
    try:
        started = _cli("start", "--brokers", "3", env=env)
        bootstrap = started.stdout.strip().splitlines()[-1]
        assert len(bootstrap.split(",")) == 3
        state = json.loads((tmp_path / "run" / "kafka.json").read_text())
        pids = state["node_pids"]
        assert len(pids) == 3 and state["owns_data_dir"] is True
        status = _cli("status", env=env)
        assert "3 of 3 nodes up" in status.stdout
        _cli("create-topic", "replicated", "--partitions", "2", "--bootstrap", bootstrap, env=env)
        topic = admin.metadata(bootstrap).topics["replicated"]
        assert all(len(p.replicas) == 3 for p in topic.partitions.values())

        os.kill(pids[2], signal.SIGKILL)  # one node crashes: the cluster answers on
        degraded = _cli("status", env=env, check=False)
        assert degraded.returncode == 1, degraded.stdout
        assert "2 of 3 nodes up" in degraded.stdout and "node 3: pid" in degraded.stdout

        stopped = _cli("stop", env=env)
        assert "was no longer running" in stopped.stdout
        assert _cli("status", env=env, check=False).returncode == 3
    finally:
        _cli("stop", env=env, check=False)
    assert not any(process.pid_alive(pid) for pid in pids)
    assert not Path(state["data_dir"]).exists()
