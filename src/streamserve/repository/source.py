"""The file-system source: which versions of a model exist on disk, and which are aspired.

Like TF Serving's ``FileSystemStoragePathSource``: every child directory of a model's
``base_path`` named by an integer is a version; the version policy picks the aspired
subset. Anything else is ignored. Each oddity (a non-integer directory, a missing
specific version, an empty base path) is logged once when it appears, not on every poll.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

from streamserve.repository.config import ModelConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScanResult:
    """Versions found under a base path; ``problem`` explains why there are none."""

    versions: dict[int, Path] = field(default_factory=dict)
    problem: str = ""


def no_versions_message(name: str, base_path: Path) -> str:
    return f"No versions of servable {name} found under base path {base_path}"


def scan_base_path(name: str, base_path: Path) -> tuple[ScanResult, list[str]]:
    """List integer-named version directories; also return the names of ignored children."""
    try:
        entries = list(os.scandir(base_path))
    except FileNotFoundError:
        return ScanResult(problem=f"{no_versions_message(name, base_path)} (it does not exist)"), []
    except OSError as exc:
        return ScanResult(problem=f"{no_versions_message(name, base_path)} ({exc})"), []
    versions: dict[int, Path] = {}
    ignored: list[str] = []
    for entry in sorted(entries, key=lambda e: e.name):
        if entry.name.isdigit() and entry.name.isascii() and _is_dir(entry):
            versions.setdefault(int(entry.name), Path(entry.path))
        else:
            ignored.append(entry.name)
    if not versions:
        problem = (
            f"{no_versions_message(name, base_path)}. "
            "Did you forget to name your leaf directory as a number (eg. '/1/')?"
        )
        return ScanResult(problem=problem), ignored
    return ScanResult(versions=versions), ignored


def _is_dir(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False


class VersionSource:
    """Scans models' base paths and applies their version policies. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._reported: dict[str, set[str]] = {}

    def scan(self, config: ModelConfig) -> ScanResult:
        """Versions on disk for ``config`` (file-system I/O; call without holding other locks)."""
        result, ignored = scan_base_path(config.name, config.base_path)
        for child in ignored:
            self._report_once(
                config.name,
                f"ignored:{child}",
                f"Ignoring {config.base_path / child} for servable {config.name}: "
                "not a directory named by a version number",
            )
        if result.problem:
            self._report_once(config.name, f"problem:{result.problem}", result.problem)
        else:
            self._forget_problems(config.name)
        return result

    def aspired(self, config: ModelConfig, scan: ScanResult) -> dict[int, Path]:
        """The versions ``config.version_policy`` wants loaded, with their directories."""
        chosen = config.version_policy.select(scan.versions)
        if config.version_policy.kind == "specific" and scan.versions:
            for missing in sorted(set(config.version_policy.versions) - chosen):
                self._report_once(
                    config.name,
                    f"missing:{missing}",
                    f"Version {missing} of servable {config.name}, asked for by the specific "
                    f"version policy, is not under base path {config.base_path}",
                )
        return {version: scan.versions[version] for version in sorted(chosen)}

    def forget(self, name: str) -> None:
        """Drop what was logged for a model (it was removed or reconfigured)."""
        with self._lock:
            self._reported.pop(name, None)

    def _report_once(self, name: str, key: str, message: str) -> None:
        with self._lock:
            seen = self._reported.setdefault(name, set())
            if key in seen:
                return
            seen.add(key)
        log.warning("%s", message)

    def _forget_problems(self, name: str) -> None:
        with self._lock:
            seen = self._reported.get(name)
            if seen:
                seen.difference_update({key for key in seen if key.startswith("problem:")})
