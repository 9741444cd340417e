"""Single-node KRaft configuration: ports, ``server.properties`` and the Log4j 2 config."""

from __future__ import annotations

import base64
import errno
import os
import socket
import uuid
from collections.abc import Mapping
from pathlib import Path

from streamserve.errors import SetupError

NODE_ID = 1
SECURITY_MODES = ("plaintext", "ssl", "mtls", "sasl_plaintext", "sasl_ssl")
"""How the local broker's client listener is secured (:mod:`streamserve.kafka.security`)."""

# Settings that make one combined broker+controller behave: every internal topic fits one
# replica, transactions and consumer groups start at once. Topics are never created on demand
# (auto.create.topics.enable=false) so a misspelt topic name is an error, not a new topic.
SINGLE_NODE_SETTINGS: dict[str, str] = {
    "num.partitions": "1",
    "default.replication.factor": "1",
    "min.insync.replicas": "1",
    "offsets.topic.replication.factor": "1",
    "offsets.topic.num.partitions": "4",
    "transaction.state.log.replication.factor": "1",
    "transaction.state.log.min.isr": "1",
    "transaction.state.log.num.partitions": "4",
    "share.coordinator.state.topic.replication.factor": "1",
    "share.coordinator.state.topic.min.isr": "1",
    "group.initial.rebalance.delay.ms": "0",
    "auto.create.topics.enable": "false",
    "delete.topic.enable": "true",
    "num.network.threads": "2",
    "num.io.threads": "4",
    "num.recovery.threads.per.data.dir": "1",
    "log.retention.hours": "24",
}

# Broker logs go to stdout, which the launcher sends to the log file together with any JVM
# output, so one file tells the whole story in order.
LOG4J2_PROPERTIES = """\
status = warn
appender.console.type = Console
appender.console.name = STDOUT
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.console.ref = STDOUT
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.state.name = state.change.logger
logger.state.level = WARN
logger.cleaner.name = kafka.log.LogCleaner
logger.cleaner.level = WARN
"""


def require_port_free(host: str, port: int) -> None:
    """Raise SetupError naming the port when something already listens on it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise SetupError(
                    f"port {port} on {host} is already in use; stop whatever "
                    f"listens there or choose another port (omit --port to let "
                    f"the OS pick a free one)"
                ) from None
            raise SetupError(f"cannot use port {port} on {host}: {exc.strerror}") from None


def require_writable_dir(path: Path) -> Path:
    """Create ``path`` if needed and prove it writable by writing into it."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise SetupError(f"data dir {path} is not writable: {exc.strerror or exc}") from None
    return path.resolve()


def new_cluster_id() -> str:
    """A KRaft cluster id: 16 random bytes, URL-safe base64 without padding, as Kafka's Uuid."""
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not text.startswith("-"):  # Kafka's Uuid.randomUuid() also avoids a leading '-'
            return text


def server_properties(
    host: str,
    port: int,
    controller_port: int,
    log_dir: Path,
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    props = {
        "process.roles": "broker,controller",
        "node.id": str(NODE_ID),
        "controller.quorum.voters": f"{NODE_ID}@{host}:{controller_port}",
        "listeners": f"PLAINTEXT://{host}:{port},CONTROLLER://{host}:{controller_port}",
        "advertised.listeners": f"PLAINTEXT://{host}:{port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "log.dirs": str(log_dir),
        **SINGLE_NODE_SETTINGS,
    }
    props.update(extra or {})
    return props


def write_properties(path: Path, props: Mapping[str, str]) -> Path:
    lines = ["# written by streamserve.kafka; regenerated on every start"]
    lines += [f"{key}={_escape(value)}" for key, value in props.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n")
