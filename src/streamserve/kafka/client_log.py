"""librdkafka's own log lines through Python logging: mapped levels, de-duplicated, scrubbed.

confluent-kafka calls the ``logger`` client setting as
``logger.log(level, "%s [%s] %s", facility, client_name, message)`` (level already a Python
level). Without it librdkafka writes raw ``%3|1700000000.123|FAIL|...`` lines to stderr,
which bypass ``--log-format json`` and repeat for every reconnect attempt.

Levels: librdkafka's errors (syslog 0-3) become WARNING — the client retries them itself,
and a command that gives up says so in one ``error:`` line; warnings stay WARNING, notices
and info INFO, debug DEBUG. A message (numbers and the "(after Nms in state X)" note ignored)
is logged once per :data:`DEDUP_WINDOW_S`; its next appearance after the window says how
many repeats were suppressed.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from streamserve.kafka.client_config import scrub, secret_values

LOGGER_NAME = "streamserve.kafka.client"
DEDUP_WINDOW_S = 60.0
_THREAD_PREFIX = re.compile(r"^\[thrd:[^\]]*\]:\s*")
_NUMBERS = re.compile(r"\d+")
_TIMING = re.compile(r"\s*\(after \d+ms in state .*\)$")


def mapped_level(level: int) -> int:
    if level >= logging.ERROR:
        return logging.WARNING
    return level


def clean_message(message: str) -> str:
    """Drop librdkafka's ``[thrd:...]:`` prefix."""
    return _THREAD_PREFIX.sub("", message.strip())


class LibrdkafkaLogBridge:
    """A ``logger`` for confluent-kafka clients (thread-safe: librdkafka threads call it)."""

    def __init__(
        self,
        logger: logging.Logger | None = None,
        window_s: float = DEDUP_WINDOW_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger or logging.getLogger(LOGGER_NAME)
        self.window_s = window_s
        self.clock = clock
        self._lock = threading.Lock()
        self._last: dict[str, tuple[float, int]] = {}  # key → (last logged at, suppressed)
        self._secrets: set[str] = set()

    def add_secrets(self, secrets: Iterable[str]) -> None:
        with self._lock:
            self._secrets.update(s for s in secrets if s)

    def log(self, level: int, fmt: str, *args: Any) -> None:
        if len(args) == 3:
            facility, client, message = (str(arg) for arg in args)
        else:
            facility, client, message = "", "", fmt % args if args else fmt
        text = clean_message(message)
        level = mapped_level(level)
        if not self.logger.isEnabledFor(level):
            return
        repeats = self._should_log(f"{facility}|{_NUMBERS.sub('#', _TIMING.sub('', text))}")
        if repeats is None:
            return
        with self._lock:
            text = scrub(text, self._secrets)
        note = f" ({repeats} more like it suppressed)" if repeats else ""
        self.logger.log(
            level,
            "librdkafka %s: %s%s",
            facility,
            text,
            note,
            extra={
                "event": "librdkafka",
                "fields": {"facility": facility, "client": client, "message": text + note},
            },
        )

    def _should_log(self, key: str) -> int | None:
        """None to suppress; else how many repeats were suppressed since the last one."""
        now = self.clock()
        with self._lock:
            last, suppressed = self._last.get(key, (None, 0))
            if last is not None and now - last < self.window_s:
                self._last[key] = (last, suppressed + 1)
                return None
            self._last[key] = (now, 0)
            return suppressed


BRIDGE = LibrdkafkaLogBridge()
"""The one bridge every client shares, so repeats are recognised across clients."""


def with_logging(settings: Mapping[str, Any]) -> dict[str, Any]:
    """``settings`` plus the shared log bridge (its secrets are scrubbed from the logs)."""
    BRIDGE.add_secrets(secret_values(settings))
    return {**settings, "logger": BRIDGE}
