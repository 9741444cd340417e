"""Apache Kafka's server jars, resolved from Maven Central by ``kafka/pom.xml`` into a cache.

Layout: ``<cache>/kafka-<version>/lib/*.jar`` where ``<cache>`` is ``$STREAMSERVE_CACHE``, else
``$XDG_CACHE_HOME/streamserve``, else ``~/.cache/streamserve``. The ``lib`` folder appears
atomically (Maven writes into a scratch folder that is renamed when complete), so its presence
means the cache is whole and later runs never call Maven again.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from streamserve.errors import SetupError

log = logging.getLogger(__name__)

# Newest Kafka 4.x whose server runs on Java 17 (its classes target Java 17).
KAFKA_VERSION = "4.4.0"
_COPY_DEPENDENCIES = "org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy-dependencies"
_MAVEN_TIMEOUT_S = 1800
_MAVEN_TAIL_LINES = 15
_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def cache_root() -> Path:
    explicit = os.environ.get("STREAMSERVE_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "streamserve"


def kafka_version() -> str:
    return os.environ.get("STREAMSERVE_KAFKA_VERSION") or KAFKA_VERSION


def lib_dir(version: str | None = None) -> Path:
    return cache_root() / f"kafka-{version or kafka_version()}" / "lib"


def jars_cached(version: str | None = None) -> bool:
    lib = lib_dir(version)
    return lib.is_dir() and any(lib.glob("kafka_2.13-*.jar"))


def find_pom() -> Path:
    """The repo's ``kafka/pom.xml``: packaged beside this module (a symlink in the source tree,
    a copy in a wheel), else found in the clone this package runs from."""
    explicit = os.environ.get("STREAMSERVE_KAFKA_POM")
    if explicit:
        candidates = [Path(explicit)]
    else:
        repo_root = Path(__file__).resolve().parents[3]
        candidates = [Path(__file__).with_name("pom.xml"), repo_root / "kafka" / "pom.xml"]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise SetupError(
        "cannot find kafka/pom.xml (looked at "
        + ", ".join(str(c) for c in candidates)
        + "); install streamserve from a clone with `pip install -e .` "
        "or set STREAMSERVE_KAFKA_POM to the pom's path"
    )


def ensure_jars(version: str | None = None, *, offline: bool = False, force: bool = False) -> Path:
    """Return the lib folder for ``version``, fetching it with Maven on first use only."""
    version = version or kafka_version()
    lib = lib_dir(version)
    if jars_cached(version) and not force:
        return lib
    lib.parent.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(lib.parent.parent / f"kafka-{version}.lock"):
        if jars_cached(version) and not force:  # another process fetched while we waited
            return lib
        _fetch_into(lib, version, offline=offline)
    return lib


def _fetch_into(lib: Path, version: str, *, offline: bool) -> None:
    mvn = require_maven("Apache Kafka's jars")
    scratch = lib.with_name("lib.partial")
    shutil.rmtree(scratch, ignore_errors=True)
    command = [
        mvn,
        "-B",
        "-q",
        "-Dstyle.color=never",
        "-f",
        str(find_pom()),
        f"-Dkafka.version={version}",
        _COPY_DEPENDENCIES,
        "-DincludeScope=runtime",
        f"-DoutputDirectory={scratch}",
    ]
    if offline:
        command.insert(1, "--offline")
    log.info("fetching Apache Kafka %s jars with Maven into %s", version, lib)
    started = time.monotonic()
    result = run_maven(command)
    if result.returncode != 0 or not any(scratch.glob("kafka_2.13-*.jar")):
        shutil.rmtree(scratch, ignore_errors=True)
        tail = maven_tail(result.stdout)
        raise SetupError(
            f"Maven could not resolve Apache Kafka {version} "
            f"(exit {result.returncode}; is Maven Central reachable?). "
            f"Maven's last lines:\n{tail}"
        )
    if lib.exists():
        shutil.rmtree(lib)
    scratch.rename(lib)
    count = sum(1 for _ in lib.glob("*.jar"))
    log.info("fetched %d jars in %.1f s", count, time.monotonic() - started)


# -- shared with the Schema Registry's fetch (streamserve.kafka.registry) ------------------


def require_maven(what: str) -> str:
    """The ``mvn`` executable, or SetupError saying it is needed once to fetch ``what``."""
    mvn = shutil.which("mvn")
    if mvn is None:
        raise SetupError(
            f"Maven (`mvn`) is needed once to fetch {what} but is not on "
            f"PATH; install it, e.g. `apt-get install maven`"
        )
    return mvn


def maven_tail(output: str) -> str:
    """Maven's last meaningful lines (colour codes and bare ``[ERROR]`` lines dropped)."""
    lines = [line.rstrip() for line in _ANSI_ESCAPE.sub("", output).splitlines()]
    meaningful = [line for line in lines if line.strip() and line.strip() != "[ERROR]"]
    return "\n".join(meaningful[-_MAVEN_TAIL_LINES:])


def run_maven(command: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run Maven with output captured (stdout and stderr together); SetupError if it cannot
    run or takes longer than half an hour."""
    try:
        return subprocess.run(
            command,
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=_MAVEN_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise SetupError(f"Maven did not finish within {_MAVEN_TIMEOUT_S} s") from None
    except OSError as exc:
        raise SetupError(f"cannot run Maven: {exc}") from None


@contextlib.contextmanager
def exclusive_lock(lock_path: Path) -> Iterator[None]:
    """Serialise fetches across processes (a test session and a CLI may fetch at once)."""
    with open(lock_path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
