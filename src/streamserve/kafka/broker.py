"""LocalKafka: a real single-node Apache Kafka (KRaft broker + controller) as a child process.

    with LocalKafka() as kafka:              # fetches jars on first use, picks free ports
        kafka.create_topic("in", partitions=3)
        produce_to(kafka.bootstrap_servers)

Files live in ``data_dir`` (default: a temporary folder removed on stop): ``server.properties``,
``log4j2.properties``, the broker's log ``kafka.log`` and the partitions under ``kafka-logs/``.
A given ``data_dir`` keeps topics and records across restarts.

``LocalKafka(security="sasl_ssl")`` (or ``ssl``, ``mtls``, ``sasl_plaintext``) runs the one
client listener secured (:mod:`streamserve.kafka.security`): a throw-away CA, certificates and
SASL users under ``data_dir/secrets``, regenerated on every start and removed on stop;
``client_config`` is what a client needs and ``client_properties_file`` the same as a file.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from streamserve.errors import SetupError
from streamserve.kafka import admin, config, jars, process
from streamserve.kafka.config import SECURITY_MODES
from streamserve.kafka.java import require_java
from streamserve.processes import free_port

if TYPE_CHECKING:
    from streamserve.kafka.security import BrokerSecurity

log = logging.getLogger(__name__)

JVM_OPTIONS = [
    "-Xms256m",
    "-Xmx512m",
    "-XX:+UseG1GC",
    "-XX:+ExitOnOutOfMemoryError",
    "-Djava.awt.headless=true",
]
LOG_FILE = "kafka.log"
SECRETS_DIR = "secrets"
_PORT_RETRIES = 3


class LocalKafka:
    """A broker this object starts, owns and stops; never left running after the interpreter.

    Thread-safety: none; start and stop from one thread. ``detached=True`` lets the broker
    outlive this process (the CLI's ``start``), otherwise it is stopped at interpreter exit
    and by the kernel if this process dies.
    """

    def __init__(
        self,
        data_dir: str | Path | None = None,
        port: int | None = None,
        *,
        controller_port: int | None = None,
        host: str = "127.0.0.1",
        version: str | None = None,
        startup_timeout: float = 180.0,
        stop_timeout: float = 30.0,
        detached: bool = False,
        extra_properties: dict[str, str] | None = None,
        security: str = "plaintext",
    ) -> None:
        if security not in SECURITY_MODES:
            choices = ", ".join(SECURITY_MODES)
            raise SetupError(f"unknown security {security!r}; choose from {choices}")
        self.security_mode = security
        self.security: BrokerSecurity | None = None
        self.host = host
        self.port = port
        self.controller_port = controller_port
        self.version = version or jars.kafka_version()
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self.detached = detached
        self.extra_properties = dict(extra_properties or {})
        self._given_data_dir = Path(data_dir).expanduser() if data_dir is not None else None
        self.data_dir: Path | None = None
        self.startup_seconds: float | None = None
        self._owns_data_dir = False
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock_fd: int | None = None

    # -- public API -------------------------------------------------------------------------

    @property
    def bootstrap_servers(self) -> str:
        if self.port is None:
            raise SetupError("the broker has not been started")
        return f"{self.host}:{self.port}"

    @property
    def client_config(self) -> dict[str, str]:
        """librdkafka settings a client needs: bootstrap servers plus, when secured, the
        security protocol, CA, SASL user or client certificate."""
        if self.security is None:
            return {"bootstrap.servers": self.bootstrap_servers}
        return self.security.client_properties(self.bootstrap_servers)

    @property
    def client_properties_file(self) -> Path | None:
        """``client_config`` as a properties file (secured brokers only)."""
        return self.security.client_properties_file if self.security is not None else None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def log_file(self) -> Path:
        if self.data_dir is None:
            raise SetupError("the broker has not been started")
        return self.data_dir / LOG_FILE

    @property
    def owns_data_dir(self) -> bool:
        """True when data_dir is a temporary folder that stopping the broker removes."""
        return self._owns_data_dir

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> LocalKafka:
        """Start the broker and return once it answers metadata requests."""
        if self.is_running():
            return self
        java = require_java()
        self._prepare_data_dir()
        try:
            if self.port is not None:
                config.require_port_free(self.host, self.port)
            if self.controller_port is not None:
                config.require_port_free(self.host, self.controller_port)
            assert self.data_dir is not None
            self._lock_fd = _lock_data_dir(self.data_dir)
            self._generate_secrets()
            lib = jars.ensure_jars(self.version)
            self._start_with_retries(java.executable, lib)
        except BaseException:
            self.stop()  # e.g. Ctrl-C while waiting: leave no process and no temp dir behind
            raise
        finally:
            self._release_lock()  # the broker holds its inherited copy for as long as it runs
        if not self.detached:
            atexit.register(self.stop)
        return self

    def stop(self) -> None:
        """SIGTERM the broker, SIGKILL it after ``stop_timeout``; remove a temporary data_dir."""
        proc, self._proc = self._proc, None
        if proc is not None:
            atexit.unregister(self.stop)
            if proc.poll() is None:
                clean = process.terminate(
                    proc.pid, timeout=self.stop_timeout, is_alive=lambda: proc.poll() is None
                )
                if not clean:
                    log.warning(
                        "Kafka broker pid %d ignored SIGTERM for %.0f s; killed it",
                        proc.pid,
                        self.stop_timeout,
                    )
            proc.wait()
        self._remove_secrets()
        self._remove_owned_data_dir()

    def kill(self) -> None:
        """SIGKILL the broker (no clean shutdown), as a crash would; keep its data dir and
        ports, so ``start()`` brings it back on both (pass fixed ports, e.g.
        ``streamserve.processes.restartable_port()``, so no other socket takes them)."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        atexit.unregister(self.stop)
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)

    def create_topic(
        self, name: str, partitions: int = 1, config: dict[str, str] | None = None
    ) -> str:
        admin.create_topic(self.client_config, name, partitions, config)
        return name

    def create_topics(self, names: list[str], partitions: int = 1) -> None:
        admin.create_topics(self.client_config, names, partitions)

    def delete_topic(self, name: str) -> bool:
        return admin.delete_topic(self.client_config, name)

    def wait_for_topic(self, name: str, timeout: float = 30.0) -> int:
        return admin.wait_for_topic(self.client_config, name, timeout)

    def __enter__(self) -> LocalKafka:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        where = f"{self.host}:{self.port}" if self.port else "not started"
        return f"LocalKafka({where}, version={self.version}, data_dir={self.data_dir})"

    # -- start-up steps ---------------------------------------------------------------------

    def _prepare_data_dir(self) -> None:
        if self._given_data_dir is not None:
            self.data_dir = config.require_writable_dir(self._given_data_dir)
            self._owns_data_dir = False
        else:
            self.data_dir = Path(tempfile.mkdtemp(prefix="streamserve-kafka-"))
            self._owns_data_dir = True

    def _generate_secrets(self) -> None:
        from streamserve.kafka.security import BrokerSecurity

        if self.security_mode == "plaintext":
            return
        assert self.data_dir is not None
        directory = self.data_dir / SECRETS_DIR
        self.security = BrokerSecurity.generate(self.security_mode, directory, self.host)

    def _remove_secrets(self) -> None:
        """Kept data dirs keep topics, never the generated keys and passwords."""
        if self.security is None or self.data_dir is None:
            return
        shutil.rmtree(self.data_dir / SECRETS_DIR, ignore_errors=True)
        (self.data_dir / "server.properties").unlink(missing_ok=True)

    def _server_properties(self) -> dict[str, str]:
        assert self.data_dir is not None and self.port and self.controller_port
        secured = (
            self.security.server_properties(self.host, self.port, self.controller_port)
            if self.security is not None
            else {}
        )
        return config.server_properties(
            self.host,
            self.port,
            self.controller_port,
            self.data_dir / "kafka-logs",
            {**secured, **self.extra_properties},
        )

    def _set_up_users(self) -> None:
        """Once the broker answers: the SCRAM credential, the client properties file, and a
        check that the client's own settings work (a new credential takes a moment)."""
        from streamserve.kafka.security import CLIENT_USER, create_scram_user

        if self.security is None:
            return
        if self.security.uses_sasl:
            broker_identity = self.security.broker_client_properties(self.bootstrap_servers)
            create_scram_user(broker_identity, CLIENT_USER, self.security.client_password)
        self.security.write_client_properties(self.bootstrap_servers)
        if not admin.wait_until_ready(self.client_config, 60.0, keep_waiting=self.is_running):
            raise SetupError("the secured broker did not accept the generated client settings")

    def _readiness_config(self) -> dict[str, str]:
        if self.security is None:
            return {"bootstrap.servers": self.bootstrap_servers}
        return self.security.broker_client_properties(self.bootstrap_servers)

    def _start_with_retries(self, java: str, lib: Path) -> None:
        """Ports chosen by us can be taken between choosing and binding: retry with new ones."""
        fixed = (self.port, self.controller_port)
        for attempt in range(1, _PORT_RETRIES + 1):
            self.port = fixed[0] or free_port(self.host)
            self.controller_port = fixed[1] or free_port(self.host)
            try:
                self._start_once(java, lib)
                return
            except _PortRaceError as exc:
                if all(fixed) or attempt == _PORT_RETRIES:
                    raise SetupError(
                        f"the Kafka broker could not bind its ports "
                        f"({self.port}, {self.controller_port}): address already "
                        f"in use; {exc}"
                    ) from None
                log.info("port taken while starting Kafka; retrying with new ports")

    def _start_once(self, java: str, lib: Path) -> None:
        assert self.data_dir is not None and self.port and self.controller_port
        props_file = config.write_properties(
            self.data_dir / "server.properties", self._server_properties()
        )
        props_file.chmod(0o600)  # a secured broker's file holds the SASL passwords
        log4j_file = self.data_dir / "log4j2.properties"
        log4j_file.write_text(config.LOG4J2_PROPERTIES)
        classpath = f"{lib}/*"
        base = [java, f"-Dlog4j2.configurationFile={log4j_file}", "-cp", classpath]
        self._format_storage_if_new(base, props_file)
        started = time.monotonic()
        self._mark_log(f"starting Kafka {self.version} on {self.bootstrap_servers}")
        log_offset = self.log_file.stat().st_size
        self._proc = process.launch(
            [*base[:1], *JVM_OPTIONS, *base[1:], "kafka.Kafka", str(props_file)],
            self.log_file,
            cwd=self.data_dir,
            die_with_parent=not self.detached,
            pass_fds=() if self._lock_fd is None else (self._lock_fd,),
        )
        ready = admin.wait_until_ready(
            self._readiness_config(), self.startup_timeout, keep_waiting=self.is_running
        )
        if not ready:
            self._fail_start(log_offset)
        self._set_up_users()
        self.startup_seconds = time.monotonic() - started
        log.info(
            "Kafka %s ready at %s in %.1f s (pid %d, log %s)",
            self.version,
            self.bootstrap_servers,
            self.startup_seconds,
            self.pid,
            self.log_file,
        )

    def _format_storage_if_new(self, base: list[str], props_file: Path) -> None:
        assert self.data_dir is not None
        if not _is_formatted(self.data_dir):
            format_storage(base, props_file, config.new_cluster_id(), f"in {self.data_dir}")

    def _fail_start(self, log_offset: int) -> None:
        died = not self.is_running()
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            process.terminate(
                proc.pid, timeout=self.stop_timeout, is_alive=lambda: proc.poll() is None
            )
        new_log = _read_from(self.log_file, log_offset)
        where = "its temporary data dir is removed" if self._owns_data_dir else self.log_file
        report = _failure_report(new_log, f"the broker's log ({where})")
        if died and "Address already in use" in new_log:
            raise _PortRaceError(report)
        if died:
            code = proc.returncode if proc is not None else "?"
            raise SetupError(f"the Kafka broker exited during start-up (exit {code}); {report}")
        raise SetupError(
            f"the Kafka broker did not answer on {self.bootstrap_servers} within "
            f"{self.startup_timeout:.0f} s; {report}"
        )

    def _mark_log(self, message: str) -> None:
        with open(self.log_file, "a") as handle:
            handle.write(f"==== streamserve: {message} ({time.strftime('%Y-%m-%d %H:%M:%S')})\n")

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _remove_owned_data_dir(self) -> None:
        if self._owns_data_dir and self.data_dir is not None:
            shutil.rmtree(self.data_dir, ignore_errors=True)


def _is_formatted(data_dir: Path) -> bool:
    """Formatted on an earlier start: keep its cluster id and data."""
    return (data_dir / "kafka-logs" / "meta.properties").exists()


def format_storage(base: list[str], props_file: Path, cluster_id: str, where: str) -> None:
    """Run Kafka's ``StorageTool format`` (``base``: java, its options and class path) for the
    node configured by ``props_file``; ``SetupError`` naming ``where`` if it fails."""
    # A short-lived tool: the quick JIT tier and serial GC make it start faster.
    quick_jvm = ["-Xmx256m", "-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC"]
    command = [
        *base[:1],
        *quick_jvm,
        *base[1:],
        "kafka.tools.StorageTool",
        "format",
        "--cluster-id",
        cluster_id,
        "--config",
        str(props_file),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    if result.returncode != 0:
        output = "\n".join((result.stdout + result.stderr).strip().splitlines()[-20:])
        raise SetupError(
            f"formatting Kafka storage {where} failed (exit {result.returncode}):\n{output}"
        )


def _lock_data_dir(data_dir: Path) -> int:
    """Lock ``data_dir`` for one broker: two on the same files corrupt its metadata log.

    Kafka's own lock comes too late in its start-up to prevent that. The returned descriptor
    is passed to the broker, so the lock lives exactly as long as the broker process.
    """
    fd = os.open(data_dir / ".streamserve.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise SetupError(
            f"data dir {data_dir} is in use by another running Kafka broker; "
            f"stop that one first or choose another --data-dir"
        ) from None
    return fd


class _PortRaceError(Exception):
    """Kafka lost a self-chosen port to another process between choice and bind."""


def _failure_report(log_text: str, log_name: str, last: int = 20) -> str:
    """The first error with its causes (the why), then the log's last lines (the end)."""
    lines = log_text.strip().splitlines()
    first = next(
        (i for i, line in enumerate(lines) if " ERROR " in line or " FATAL " in line), None
    )
    parts = []
    if first is not None:
        block = lines[first : first + 40]
        causes = [line for line in block[2:] if line.startswith("Caused by:")]
        parts.append("first error:\n" + "\n".join([*block[:2], *causes]))
    parts.append(f"last lines of {log_name}:\n" + "\n".join(lines[-last:]))
    return "\n".join(parts)


def _read_from(path: Path, offset: int) -> str:
    try:
        with open(path, "rb") as handle:
            handle.seek(offset)
            return handle.read().decode(errors="replace")
    except OSError:
        return ""
