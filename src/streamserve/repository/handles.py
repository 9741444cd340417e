"""Per-version bookkeeping and the short-lived handle a request holds on one version."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from streamserve.errors import Code
from streamserve.repository.config import ModelConfig
from streamserve.repository.states import VersionState, VersionStatus
from streamserve.runtimes.base import Servable


@dataclass(eq=False)
class VersionRecord:
    """One version of one model. Mutated only under the manager's lock.

    ``refcount`` counts open handles; a version in UNLOADING is closed when it drops
    to zero. ``load_failed`` stops retrying a broken version while it stays aspired.
    """

    version: int
    path: Path
    state: VersionState = VersionState.START
    servable: Servable | None = None
    refcount: int = 0
    error_code: Code = Code.OK
    error_message: str = ""
    load_failed: bool = False
    close_scheduled: bool = False
    load_seconds: float | None = None

    def status(self) -> VersionStatus:
        return VersionStatus(self.version, self.state, self.error_code, self.error_message)


@dataclass(eq=False)
class ModelRecord:
    """Everything the manager knows about one model. Mutated only under the manager lock.

    ``labels`` and ``split`` are the ones in force, which may lag ``config`` when a
    reload's labels were refused.
    """

    config: ModelConfig
    versions: dict[int, VersionRecord] = field(default_factory=dict)
    aspired: dict[int, Path] = field(default_factory=dict)
    labels: dict[str, int] = field(default_factory=dict)
    split: dict[str, float] = field(default_factory=dict)
    problem: str = ""
    retired: bool = False

    @property
    def name(self) -> str:
        return self.config.name

    def is_available(self, version: int) -> bool:
        record = self.versions.get(version)
        return record is not None and record.state == VersionState.AVAILABLE

    def prune_ended(self, keep: int = 16) -> None:
        """Forget the oldest ended, unaspired versions so status history stays bounded."""
        ended = sorted(
            v
            for v, r in self.versions.items()
            if r.state == VersionState.END and v not in self.aspired
        )
        for version in ended[: max(len(ended) - keep, 0)]:
            del self.versions[version]

    def latest_available(self) -> VersionRecord | None:
        latest = None
        for record in self.versions.values():  # a loop: this runs on every request
            if record.state == VersionState.AVAILABLE and (
                latest is None or record.version > latest.version
            ):
                latest = record
        return latest


class Handle(Protocol):
    """What a model call needs from a held version (:class:`ServableHandle` is one)."""

    @property
    def name(self) -> str: ...

    @property
    def version(self) -> int: ...

    @property
    def servable(self) -> Servable: ...


class ServableHandle:
    """Keeps one AVAILABLE version loaded while open. Use as a context manager.

    ``servable.predict`` is thread-safe; the handle itself belongs to one request.
    Releasing twice is harmless.
    """

    __slots__ = ("_release", "_released", "label", "name", "servable", "version")

    def __init__(
        self,
        name: str,
        version: int,
        servable: Servable,
        release: Callable[[], None],
        label: str | None = None,
    ) -> None:
        self.name = name
        self.version = version
        self.servable = servable
        self.label = label
        self._release: Callable[[], None] | None = release
        self._released = threading.Lock()

    def release(self) -> None:
        with self._released:
            release, self._release = self._release, None
        if release is not None:
            release()

    close = release

    def __enter__(self) -> ServableHandle:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"ServableHandle({self.name!r}, version={self.version})"
