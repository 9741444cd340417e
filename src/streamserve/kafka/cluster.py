"""LocalKafkaCluster: N real Kafka nodes (KRaft) as child processes, for fault tests.

    with LocalKafkaCluster(brokers=3) as cluster:     # free ports, one data dir per node
        cluster.create_topic("in", partitions=4)      # replication factor 3
        leader = cluster.partition_leader("in", 0)
        cluster.kill(leader)                          # SIGKILL that node's JVM
        cluster.restart(leader)                       # same data dir, same ports

Every node is one JVM running both roles (``process.roles=broker,controller``), node ids
``1..N``, all of them voters of the controller quorum: with 3 nodes any one of them can be
killed and the quorum (2 of 3) and every partition (replication factor 3,
``min.insync.replicas=2``) stay available. The internal topics (consumer offsets,
transaction state, share-group state) get the same replication factor and min ISR, and so
does every topic created with the broker default (``replication_factor=-1``).

Node ``i`` lives in ``<data_dir>/node-<i>`` (``server.properties``, ``log4j2.properties``,
``kafka.log``, ``kafka-logs/``). Ports are fixed at the first start and kept for restarts;
they are chosen below the OS's ephemeral port range, so no outgoing connection takes a
killed node's port before it comes back.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from confluent_kafka import KafkaException

from streamserve.errors import SetupError, Unavailable
from streamserve.kafka import admin, config, jars, process
from streamserve.kafka.broker import (
    JVM_OPTIONS,
    LOG_FILE,
    _failure_report,
    _is_formatted,
    _lock_data_dir,
    _read_from,
    format_storage,
)
from streamserve.kafka.java import require_java
from streamserve.processes import restartable_port
from streamserve.waiting import WaitTimeout, wait_until

log = logging.getLogger(__name__)

TRANSACTION_STATE_TOPIC = "__transaction_state"
OFFSETS_TOPIC = "__consumer_offsets"


def cluster_settings(brokers: int) -> dict[str, str]:
    """Replication for ``brokers`` nodes: factor min(3, N), min ISR one less (at least 1)."""
    replicas = min(3, brokers)
    min_isr = max(1, replicas - 1)
    return {
        **config.SINGLE_NODE_SETTINGS,
        "default.replication.factor": str(replicas),
        "min.insync.replicas": str(min_isr),
        "offsets.topic.replication.factor": str(replicas),
        "transaction.state.log.replication.factor": str(replicas),
        "transaction.state.log.min.isr": str(min_isr),
        "share.coordinator.state.topic.replication.factor": str(replicas),
        "share.coordinator.state.topic.min.isr": str(min_isr),
        # A killed node is fenced (and its partitions move) after this long without a
        # heartbeat (Kafka's default: 9 s).
        "broker.session.timeout.ms": "6000",
        "broker.heartbeat.interval.ms": "1000",
        "replica.lag.time.max.ms": "10000",
    }


class ClusterNode:
    """One KRaft node (broker + controller) of a :class:`LocalKafkaCluster`."""

    def __init__(
        self,
        node_id: int,
        data_dir: Path,
        host: str,
        port: int,
        controller_port: int,
        *,
        version: str,
        detached: bool,
        stop_timeout: float,
    ) -> None:
        self.node_id = node_id
        self.data_dir = data_dir
        self.host = host
        self.port = port
        self.controller_port = controller_port
        self.version = version
        self.detached = detached
        self.stop_timeout = stop_timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def log_file(self) -> Path:
        return self.data_dir / LOG_FILE

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def launch(self, java: str, lib: Path, props: dict[str, str], cluster_id: str) -> None:
        """Start the JVM (formatting the storage on first use); do not wait for readiness:
        a node only becomes ready once a majority of the controller quorum runs."""
        if self.is_running():
            return
        config.require_writable_dir(self.data_dir)
        config.require_port_free(self.host, self.port)
        config.require_port_free(self.host, self.controller_port)
        props_file = config.write_properties(self.data_dir / "server.properties", props)
        log4j_file = self.data_dir / "log4j2.properties"
        log4j_file.write_text(config.LOG4J2_PROPERTIES)
        base = [java, f"-Dlog4j2.configurationFile={log4j_file}", "-cp", f"{lib}/*"]
        self._format_storage_if_new(base, props_file, cluster_id)
        lock_fd = _lock_data_dir(self.data_dir)
        try:
            with open(self.log_file, "a") as handle:
                handle.write(
                    f"==== streamserve: starting node {self.node_id} on {self.address} "
                    f"({time.strftime('%Y-%m-%d %H:%M:%S')})\n"
                )
            self._log_offset = self.log_file.stat().st_size
            self._proc = process.launch(
                [*base[:1], *JVM_OPTIONS, *base[1:], "kafka.Kafka", str(props_file)],
                self.log_file,
                cwd=self.data_dir,
                die_with_parent=not self.detached,
                pass_fds=(lock_fd,),
            )
        finally:
            os.close(lock_fd)  # the node holds its inherited copy for as long as it runs

    def _format_storage_if_new(self, base: list[str], props_file: Path, cluster_id: str) -> None:
        if not _is_formatted(self.data_dir):
            where = f"of node {self.node_id} in {self.data_dir}"
            format_storage(base, props_file, cluster_id, where)

    def failure_report(self) -> str:
        return _failure_report(
            _read_from(self.log_file, self._log_offset), f"node {self.node_id}'s log"
        )

    def kill(self) -> None:
        """SIGKILL the node (no clean shutdown), and reap it."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)

    def signal(self, signum: int) -> None:
        if self._proc is not None and self._proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._proc.pid, signum)

    def stop(self, timeout: float | None = None) -> None:
        """SIGTERM, SIGKILL after ``timeout`` (default ``stop_timeout``)."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            process.terminate(
                proc.pid,
                timeout=self.stop_timeout if timeout is None else timeout,
                is_alive=lambda: proc.poll() is None,
            )
        proc.wait()

    def forget(self) -> None:
        self._proc = None


class LocalKafkaCluster:
    """``brokers`` KRaft nodes this object starts, owns and stops (see the module doc).

    Thread-safety: none; use from one thread (a long-lived one: the nodes get SIGTERM
    from the kernel when the thread that started them exits, unless ``detached``).
    """

    def __init__(
        self,
        brokers: int = 3,
        data_dir: str | Path | None = None,
        *,
        host: str = "127.0.0.1",
        version: str | None = None,
        startup_timeout: float = 180.0,
        stop_timeout: float = 30.0,
        detached: bool = False,
        extra_properties: dict[str, str] | None = None,
    ) -> None:
        if brokers < 1:
            raise SetupError(f"a cluster needs at least one broker, not {brokers}")
        self.size = brokers
        self.host = host
        self.version = version or jars.kafka_version()
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self.detached = detached
        self.extra_properties = dict(extra_properties or {})
        self._given_data_dir = Path(data_dir).expanduser() if data_dir is not None else None
        self.data_dir: Path | None = None
        self._owns_data_dir = False
        self.nodes: dict[int, ClusterNode] = {}
        self.cluster_id = ""
        self.startup_seconds: float | None = None
        self._java = ""
        self._lib: Path | None = None

    # -- public API -------------------------------------------------------------------------

    @property
    def bootstrap_servers(self) -> str:
        if not self.nodes:
            raise SetupError("the cluster has not been started")
        return ",".join(node.address for node in self.nodes.values())

    @property
    def owns_data_dir(self) -> bool:
        return self._owns_data_dir

    def node(self, node_id: int) -> ClusterNode:
        try:
            return self.nodes[node_id]
        except KeyError:
            raise SetupError(f"no node {node_id} (nodes: {sorted(self.nodes)})") from None

    def start(self) -> LocalKafkaCluster:
        """Start every node and return once all of them are registered brokers."""
        if self.nodes and all(node.is_running() for node in self.nodes.values()):
            return self
        self._java = require_java().executable
        self._lib = jars.ensure_jars(self.version)
        self._prepare_nodes()
        started = time.monotonic()
        try:
            for node in self.nodes.values():
                node.launch(self._java, self._lib, self._properties(node), self.cluster_id)
            self._wait_for_brokers(set(self.nodes), self.startup_timeout)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - started
        if not self.detached:
            atexit.register(self.stop)
        log.info(
            "Kafka cluster of %d ready at %s in %.1f s",
            self.size,
            self.bootstrap_servers,
            self.startup_seconds,
        )
        return self

    def stop(self) -> None:
        """Stop every node; remove a temporary data dir.

        A temporary cluster is simply killed (its data goes anyway). Otherwise every node
        gets SIGTERM at once (one by one, the last ones would wait for a controller quorum
        that is gone) and SIGKILL after ``stop_timeout``.
        """
        atexit.unregister(self.stop)
        running = [node for node in self.nodes.values() if node.is_running()]
        if self._owns_data_dir:
            for node in running:
                node.kill()
        else:
            for node in running:
                node.signal(signal.SIGTERM)
            deadline = time.monotonic() + self.stop_timeout
            for node in running:
                node.stop(max(0.0, deadline - time.monotonic()))
        for node in self.nodes.values():
            node.forget()
        if self._owns_data_dir and self.data_dir is not None:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def kill(self, node_id: int) -> None:
        """SIGKILL node ``node_id`` (its data dir and ports are kept for :meth:`restart`)."""
        self.node(node_id).kill()
        log.info("killed Kafka node %d", node_id)

    def restart(self, node_id: int, timeout: float | None = None) -> None:
        """Start a killed or stopped node again, same data dir and ports; return once it is
        a registered broker again."""
        node = self.node(node_id)
        if node.is_running():
            return
        assert self._lib is not None
        node.launch(self._java, self._lib, self._properties(node), self.cluster_id)
        self._wait_for_brokers({node_id}, timeout or self.startup_timeout)

    def live_brokers(self, timeout: float = 5.0) -> set[int]:
        """Broker ids the cluster's metadata lists now (fenced brokers are not listed)."""
        cluster = admin.metadata(self._running_bootstrap(), timeout)
        return set(cluster.brokers)

    def create_topic(
        self, name: str, partitions: int = 1, topic_config: dict[str, str] | None = None
    ) -> str:
        admin.create_topic(self._running_bootstrap(), name, partitions, topic_config)
        return name

    def partition_leader(self, topic: str, partition: int, timeout: float = 30.0) -> int:
        """The broker id leading ``topic``'s ``partition`` now (waits for one)."""

        def leader() -> int | None:
            try:
                found = admin.metadata(self._running_bootstrap(), 5.0).topics.get(topic)
            except Unavailable:
                return None
            if found is None or found.error is not None or partition not in found.partitions:
                return None
            node = found.partitions[partition].leader
            return node if node >= 0 and self._is_up(node) else None

        found_leader = wait_until(leader, timeout, f"a leader for {topic}[{partition}]", 0.2)
        assert found_leader is not None
        return found_leader

    def group_coordinator(self, group_id: str, timeout: float = 30.0) -> int:
        """The broker id coordinating consumer group ``group_id`` (DescribeGroups)."""
        client = admin.admin_client(self._running_bootstrap())

        def coordinator() -> int | None:
            futures = client.describe_consumer_groups([group_id], request_timeout=5)
            try:
                description: Any = futures[group_id].result(timeout=10)
            except KafkaException:
                return None
            node = description.coordinator
            return int(node.id) if node is not None and self._is_up(int(node.id)) else None

        found = wait_until(coordinator, timeout, f"the coordinator of group {group_id}", 0.2)
        assert found is not None
        return found

    def transaction_coordinator(self, transactional_id: str, timeout: float = 30.0) -> int:
        """The broker id coordinating ``transactional_id``: the leader of its partition of
        ``__transaction_state`` (Kafka: ``abs(id.hashCode()) % partitions``)."""
        partitions = self._partition_count(TRANSACTION_STATE_TOPIC, timeout)
        partition = java_abs(java_string_hash(transactional_id)) % partitions
        return self.partition_leader(TRANSACTION_STATE_TOPIC, partition, timeout)

    def __enter__(self) -> LocalKafkaCluster:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        where = self.bootstrap_servers if self.nodes else "not started"
        return f"LocalKafkaCluster({self.size} nodes, {where}, data_dir={self.data_dir})"

    # -- internals --------------------------------------------------------------------------

    def _prepare_nodes(self) -> None:
        if self.nodes:
            return  # restarting a stopped cluster: same dirs, ports and cluster id
        if self._given_data_dir is not None:
            self.data_dir = config.require_writable_dir(self._given_data_dir)
        else:
            self.data_dir = Path(tempfile.mkdtemp(prefix="streamserve-kafka-cluster-"))
            self._owns_data_dir = True
        id_file = self.data_dir / "cluster.id"
        if id_file.exists():
            self.cluster_id = id_file.read_text().strip()
        else:
            self.cluster_id = config.new_cluster_id()
            id_file.write_text(self.cluster_id + "\n")
        for node_id in range(1, self.size + 1):
            node_dir = self.data_dir / f"node-{node_id}"
            ports = _saved_ports(node_dir) or (restartable_port(), restartable_port())
            self.nodes[node_id] = ClusterNode(
                node_id,
                node_dir,
                self.host,
                ports[0],
                ports[1],
                version=self.version,
                detached=self.detached,
                stop_timeout=self.stop_timeout,
            )

    def _properties(self, node: ClusterNode) -> dict[str, str]:
        voters = ",".join(
            f"{other.node_id}@{other.host}:{other.controller_port}" for other in self.nodes.values()
        )
        props = config.server_properties(
            node.host,
            node.port,
            node.controller_port,
            node.data_dir / "kafka-logs",
            {**cluster_settings(self.size), **self.extra_properties},
        )
        props["node.id"] = str(node.node_id)
        props["controller.quorum.voters"] = voters
        return props

    def _running_bootstrap(self) -> str:
        running = [node.address for node in self.nodes.values() if node.is_running()]
        if not running:
            raise SetupError("no node of the cluster is running")
        return ",".join(running)

    def _is_up(self, node_id: int) -> bool:
        node = self.nodes.get(node_id)
        return node is not None and node.is_running()

    def _partition_count(self, topic: str, timeout: float) -> int:
        def count() -> int:
            try:
                found = admin.metadata(self._running_bootstrap(), 5.0).topics.get(topic)
            except Unavailable:
                return 0
            return len(found.partitions) if found is not None and found.error is None else 0

        return wait_until(count, timeout, f"topic {topic} in the metadata", 0.2)

    def _wait_for_brokers(self, node_ids: set[int], timeout: float) -> None:
        def registered() -> bool:
            for node_id in node_ids:
                node = self.nodes[node_id]
                if not node.is_running():
                    code = node._proc.returncode if node._proc is not None else "?"
                    raise SetupError(
                        f"Kafka node {node_id} exited during start-up (exit {code}); "
                        + node.failure_report()
                    )
            try:
                return node_ids <= self.live_brokers(timeout=2.0)
            except (Unavailable, SetupError):
                return False

        def describe() -> str:
            return "\n".join(self.nodes[node_id].failure_report() for node_id in sorted(node_ids))

        try:
            wait_until(
                registered,
                timeout,
                f"Kafka nodes {sorted(node_ids)} registered as brokers",
                interval=0.2,
                describe=describe,
            )
        except WaitTimeout as exc:
            raise SetupError(str(exc)) from None


def _saved_ports(node_dir: Path) -> tuple[int, int] | None:
    """The ports in a node's ``server.properties`` from an earlier start, if any."""
    props_file = node_dir / "server.properties"
    if not props_file.exists():
        return None
    listeners = ""
    for line in props_file.read_text().splitlines():
        if line.startswith("listeners="):
            listeners = line.partition("=")[2]
    ports: dict[str, int] = {}
    for listener in listeners.split(","):
        name, _, address = listener.partition("://")
        if address:
            ports[name] = int(address.rsplit(":", 1)[1])
    if "PLAINTEXT" in ports and "CONTROLLER" in ports:
        return ports["PLAINTEXT"], ports["CONTROLLER"]
    return None


def java_string_hash(text: str) -> int:
    """Java's ``String.hashCode()`` (UTF-16 code units, 32-bit wrap-around)."""
    value = 0
    data = text.encode("utf-16-be")
    for index in range(0, len(data), 2):
        value = (31 * value + int.from_bytes(data[index : index + 2], "big")) & 0xFFFFFFFF
    return value - (1 << 32) if value >= 1 << 31 else value


def java_abs(value: int) -> int:
    """Kafka's ``Utils.abs``: ``Integer.MIN_VALUE`` maps to 0."""
    return 0 if value == -(1 << 31) else abs(value)
