"""``--model_config_file_poll_wait_seconds``: re-read the model config file and apply it.

Every interval the file is read in a worker thread; when its bytes changed since the
last applied version, it is parsed and handed to ``apply`` (the manager's
``reload_config``), which adds, removes and updates models without a restart. A file
that cannot be read or parsed is logged and skipped: the server keeps the last good
configuration, as TF Serving does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from pathlib import Path

from streamserve.errors import StreamserveError
from streamserve.repository import ModelConfig

log = logging.getLogger(__name__)


class ConfigFilePoller:
    def __init__(
        self,
        path: Path,
        interval_seconds: float,
        parse: Callable[[], list[ModelConfig]],
        apply: Callable[[list[ModelConfig]], None],
    ) -> None:
        self._path = path
        self._interval = interval_seconds
        self._parse = parse
        self._apply = apply
        self._last_applied: bytes | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start polling; the file as it is now counts as already applied."""
        with contextlib.suppress(OSError):
            self._last_applied = self._path.read_bytes()
        self._task = asyncio.create_task(self._run(), name="model-config-poller")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            await asyncio.to_thread(self.poll_once)

    def poll_once(self) -> bool:
        """Apply the file if it changed; True when a new configuration was applied."""
        try:
            content = self._path.read_bytes()
        except OSError as exc:
            log.warning("cannot read model config file %s: %s", self._path, exc)
            return False
        if content == self._last_applied:
            return False
        try:
            configs = self._parse()
            self._apply(configs)
        except StreamserveError as exc:
            log.error("model config file %s not applied: %s", self._path, exc.message)
            self._last_applied = content  # do not log the same error every interval
            return False
        self._last_applied = content
        log.info("applied model config file %s (%d models)", self._path, len(configs))
        return True
