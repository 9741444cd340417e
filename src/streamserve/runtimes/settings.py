"""``streamserve.json``: per-model runtime settings, beside the model.

Looked up in the version directory first, then in the model's base path (its parent),
so one file can cover every version::

    {"onnx": {"execution_providers": ["CUDAExecutionProvider", "CPUExecutionProvider"],
              "intra_op_threads": 4, "inter_op_threads": 1},
     "sklearn": {"input_dtype": "float32"}}

Every key is optional; a section's keys override the server-wide flags for that model.
A file that is not a JSON object fails the load with ``INVALID_ARGUMENT`` naming it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from streamserve.errors import InvalidArgument

SETTINGS_FILE = "streamserve.json"


def settings_path(version_dir: Path) -> Path | None:
    """The settings file that applies to ``version_dir``, if any."""
    for directory in (version_dir, version_dir.parent):
        path = directory / SETTINGS_FILE
        if path.is_file():
            return path
    return None


def read_settings(version_dir: Path) -> dict[str, Any]:
    """The applicable ``streamserve.json`` as a dict ({} when there is none)."""
    path = settings_path(version_dir)
    if path is None:
        return {}
    try:
        settings = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InvalidArgument(f"cannot read {path}: {exc}") from exc
    if not isinstance(settings, dict):
        raise InvalidArgument(f"{path} must hold a JSON object, got {type(settings).__name__}")
    return settings


def section(version_dir: Path, name: str) -> dict[str, Any]:
    """One runtime's section of the settings ({} when absent)."""
    path = settings_path(version_dir)
    value = read_settings(version_dir).get(name, {})
    if not isinstance(value, dict):
        raise InvalidArgument(f"{path}: '{name}' must be a JSON object")
    return value
