"""Finding a Java runtime new enough for the Kafka broker (Kafka 4.x servers need Java 17+)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from streamserve.errors import SetupError

MIN_JAVA = 17
_INSTALL_HINT = "install one, e.g. `apt-get install openjdk-17-jre-headless`, or set JAVA_HOME"
_VERSION_RE = re.compile(r'version "([^"]+)"')


@dataclass(frozen=True)
class Java:
    executable: str
    version: str
    major: int


def find_java() -> str:
    """The java executable to use: ``$JAVA_HOME/bin/java`` if JAVA_HOME is set, else PATH's."""
    java_home = os.environ.get("JAVA_HOME")
    if java_home:
        candidate = Path(java_home) / "bin" / "java"
        if not os.access(candidate, os.X_OK):
            raise SetupError(
                f"JAVA_HOME is {java_home} but {candidate} is not an executable; "
                f"fix JAVA_HOME or unset it to use the java on PATH"
            )
        return str(candidate)
    found = shutil.which("java")
    if found is None:
        raise SetupError(
            f"Java {MIN_JAVA} or newer is needed to run the Kafka broker, but no "
            f"`java` was found on PATH; {_INSTALL_HINT}"
        )
    return found


def parse_major(version: str) -> int:
    """``"17.0.15"`` → 17, ``"1.8.0_292"`` → 8, ``"21-ea"`` → 21."""
    parts = re.split(r"[.\-_+]", version)
    if parts[0] == "1" and len(parts) > 1:
        return int(parts[1])
    return int(parts[0])


def require_java(minimum: int = MIN_JAVA) -> Java:
    """Return the Java to run Kafka with, or raise SetupError saying what to fix."""
    executable = find_java()
    try:
        result = subprocess.run(
            [executable, "-version"], capture_output=True, text=True, timeout=60, check=False
        )
    except OSError as exc:
        raise SetupError(f"cannot run {executable} -version: {exc}; {_INSTALL_HINT}") from None
    except subprocess.TimeoutExpired:
        raise SetupError(f"{executable} -version did not answer within 60 s") from None
    output = result.stderr + result.stdout
    match = _VERSION_RE.search(output)
    if result.returncode != 0 or match is None:
        raise SetupError(
            f"cannot tell the version of {executable} (`java -version` printed: "
            f"{output.strip()[:300]!r}); {_INSTALL_HINT}"
        )
    version = match.group(1)
    try:
        major = parse_major(version)
    except ValueError:
        raise SetupError(f"cannot parse Java version {version!r} from {executable}") from None
    if major < minimum:
        raise SetupError(
            f"Java {minimum} or newer is needed to run the Kafka broker, but "
            f"{executable} is Java {version}; {_INSTALL_HINT}"
        )
    return Java(executable=executable, version=version, major=major)
