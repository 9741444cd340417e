"""What ``streamserve kafka start`` leaves behind so later commands find its detached broker.

``<run dir>/kafka.json`` (state) and ``<run dir>/kafka.pid``; the run dir is
``$STREAMSERVE_RUN_DIR``, else ``<cache>/run``. With ``--schema-registry``, the registry's
beside them: ``schema-registry.json`` and ``schema-registry.pid``.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

from streamserve.kafka import process
from streamserve.kafka.jars import cache_root

STATE_FILE = "kafka.json"
PID_FILE = "kafka.pid"
REGISTRY_STATE_FILE = "schema-registry.json"
REGISTRY_PID_FILE = "schema-registry.pid"


@dataclass(frozen=True)
class BrokerState:
    pid: int
    bootstrap_servers: str
    version: str
    data_dir: str
    log_file: str
    owns_data_dir: bool
    started_at: float
    security: str = "plaintext"
    client_properties: str | None = None  # secured brokers: the generated client settings

    def client_config(self) -> dict[str, str]:
        """What a client of this broker needs (read from its client properties file)."""
        if self.client_properties is None:
            return {"bootstrap.servers": self.bootstrap_servers}
        from streamserve.kafka.client_config import read_properties_file

        return read_properties_file(self.client_properties)

    # A cluster (``start --brokers N``): every node's pid, node 1 first (``pid`` is node 1's).
    node_pids: list[int] = field(default_factory=list)

    @property
    def pids(self) -> list[int]:
        return self.node_pids or [self.pid]


def run_dir() -> Path:
    explicit = os.environ.get("STREAMSERVE_RUN_DIR")
    return Path(explicit).expanduser() if explicit else cache_root() / "run"


def save(state: BrokerState) -> None:
    _write(STATE_FILE, PID_FILE, asdict(state), state.pid)


def _write(state_file: str, pid_file: str, state: dict[str, object], pid: int) -> None:
    directory = run_dir()
    directory.mkdir(parents=True, exist_ok=True)
    scratch = directory / (state_file + ".tmp")
    scratch.write_text(json.dumps(state, indent=2) + "\n")
    scratch.replace(directory / state_file)
    (directory / pid_file).write_text(f"{pid}\n")


def load() -> BrokerState | None:
    try:
        raw = json.loads((run_dir() / STATE_FILE).read_text())
        return BrokerState(**raw)
    except (OSError, ValueError, TypeError):
        return None


def clear(state: BrokerState | None) -> None:
    """Forget the broker; remove its data dir when it was a temporary one, and always the
    secrets it generated (certificates, keys, passwords)."""
    if state is not None and state.owns_data_dir:
        shutil.rmtree(state.data_dir, ignore_errors=True)
    if state is not None and state.client_properties is not None:
        shutil.rmtree(Path(state.client_properties).parent, ignore_errors=True)
        (Path(state.data_dir) / "server.properties").unlink(missing_ok=True)
    for name in (STATE_FILE, PID_FILE):
        (run_dir() / name).unlink(missing_ok=True)


def is_alive(state: BrokerState) -> bool:
    """A recorded pid still runs *our* broker (a recycled pid is not mistaken for it)."""
    return any(pid_is_broker(pid) for pid in state.pids)


def pid_is_broker(pid: int) -> bool:
    return process.pid_alive(pid) and "kafka.Kafka" in process.cmdline(pid)


# -- the Schema Registry (``kafka start --schema-registry``) ---------------------------------


@dataclass(frozen=True)
class RegistryState:
    pid: int
    url: str  # the Confluent-compatible API (``schema.registry.url``)
    version: str
    work_dir: str  # temporary: settings, secrets and log; removed on stop
    log_file: str
    started_at: float
    security: str = "plaintext"
    client_properties: str | None = None  # secured registries: the generated client settings


def save_registry(state: RegistryState) -> None:
    _write(REGISTRY_STATE_FILE, REGISTRY_PID_FILE, asdict(state), state.pid)


def load_registry() -> RegistryState | None:
    try:
        raw = json.loads((run_dir() / REGISTRY_STATE_FILE).read_text())
        return RegistryState(**raw)
    except (OSError, ValueError, TypeError):
        return None


def clear_registry(state: RegistryState | None) -> None:
    """Forget the registry and remove its work dir (settings, secrets, log)."""
    if state is not None:
        shutil.rmtree(state.work_dir, ignore_errors=True)
    for name in (REGISTRY_STATE_FILE, REGISTRY_PID_FILE):
        (run_dir() / name).unlink(missing_ok=True)


def pid_is_registry(pid: int) -> bool:
    """``pid`` still runs *our* registry (a recycled pid is not mistaken for it)."""
    command = process.cmdline(pid)
    return process.pid_alive(pid) and "quarkus-run.jar" in command and "apicurio" in command
