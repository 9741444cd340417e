"""Delivering version state changes to listeners (metrics, logs) in the order they happened.

State changes happen on several threads (loader pool, unloader, request threads closing
the last handle). They are queued under the manager's lock, so the queue order is the
true order, and one dispatcher thread calls listeners outside any lock: a slow or
failing listener never blocks loading or serving.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import NamedTuple

from streamserve.repository.states import VersionState

log = logging.getLogger(__name__)

Listener = Callable[[str, int, VersionState, "float | None"], None]


class StateEvent(NamedTuple):
    name: str
    version: int
    state: VersionState
    load_seconds: float | None


class EventDispatcher:
    """Calls every listener for every event, in order, on one background thread."""

    def __init__(self) -> None:
        self._listeners: list[Listener] = []
        self._queue: queue.SimpleQueue[StateEvent | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def add_listener(self, listener: Listener) -> None:
        with self._lock:
            self._listeners = [*self._listeners, listener]

    def publish(self, event: StateEvent) -> None:
        self._queue.put(event)

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name="streamserve-model-events", daemon=True
            )
            self._thread.start()

    def stop(self) -> None:
        """Deliver what is queued, then stop."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        while (event := self._queue.get()) is not None:
            for listener in self._listeners:
                try:
                    listener(*event)
                except Exception:
                    log.exception("Model state listener %r failed on %s", listener, event)
