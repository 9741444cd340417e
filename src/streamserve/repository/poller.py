"""Re-read ``--model_config_file`` every N seconds and reload the manager when it changed.

TF Serving's ``--model_config_file_poll_wait_seconds``. The optional traffic split side
file is watched along with it. A bad file is logged once (per content) and ignored: the
running configuration keeps serving until a good file appears.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from streamserve.errors import StreamserveError
from streamserve.repository.config import load_model_configs
from streamserve.repository.manager import ModelManager

log = logging.getLogger(__name__)


class ConfigFilePoller:
    """Background thread calling ``manager.reload_config`` when the file contents change."""

    def __init__(
        self,
        manager: ModelManager,
        config_file: str | Path,
        interval_seconds: float,
        traffic_split_file: str | Path | None = None,
    ) -> None:
        if interval_seconds <= 0:
            raise ValueError("interval_seconds must be > 0 (0 means: read the file once)")
        self._manager = manager
        self._config_file = Path(config_file)
        self._split_file = Path(traffic_split_file) if traffic_split_file else None
        self._interval = interval_seconds
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_seen = self._read_contents()

    def start(self) -> ConfigFilePoller:
        """Start watching; the contents at construction are taken as already applied."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name="streamserve-config-poller", daemon=True
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def __enter__(self) -> ConfigFilePoller:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def poll_once(self) -> bool:
        """Reload when the files changed since the last poll; True when a reload succeeded."""
        contents = self._read_contents()
        if contents == self._last_seen:
            return False
        self._last_seen = contents
        try:
            configs = load_model_configs(self._config_file, self._split_file)
            self._manager.reload_config(configs)
        except StreamserveError as exc:
            log.error("Model config reload from %s failed: %s", self._config_file, exc.message)
            return False
        log.info("Reloaded model config from %s", self._config_file)
        return True

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.poll_once()
            except Exception:
                log.exception("Polling the model config file failed")

    def _read_contents(self) -> tuple[bytes | None, bytes | None]:
        return _read_or_none(self._config_file), (
            _read_or_none(self._split_file) if self._split_file else None
        )


def _read_or_none(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


def config_file_poller(
    manager: ModelManager,
    config_file: str | Path,
    interval_seconds: float,
    traffic_split_file: str | Path | None = None,
) -> ConfigFilePoller:
    """Start and return a :class:`ConfigFilePoller` (stop it, or use it as a context manager)."""
    return ConfigFilePoller(manager, config_file, interval_seconds, traffic_split_file).start()
