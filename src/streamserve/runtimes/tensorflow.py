"""TensorFlow SavedModel runtime (optional ``streamserve[tensorflow]`` extra).

Placeholder until the full runtime lands: loading raises ``Unimplemented``.
"""

from __future__ import annotations

from pathlib import Path

from streamserve.errors import Unimplemented
from streamserve.runtimes.base import LoadOptions, Servable


class TensorFlowRuntime:
    name = "tensorflow"

    def __init__(self, options: LoadOptions | None = None) -> None:
        self._options = options

    def can_load(self, version_dir: Path) -> bool:
        return (version_dir / "saved_model.pb").is_file()

    def load(self, version_dir: Path) -> Servable:
        raise Unimplemented(f"{version_dir}: the TensorFlow runtime is not implemented yet")
