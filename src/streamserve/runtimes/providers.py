"""ONNX Runtime execution providers: what was asked for, what this machine has, what is used.

``--onnx_execution_providers CUDAExecutionProvider,CPUExecutionProvider`` (or a model's
``streamserve.json``) lists providers in order of preference; short aliases work too
(``cuda``, ``tensorrt``, ``openvino``, ``rocm``, ``migraphx``, ``dml``, ``coreml``,
``cpu``). A provider this onnxruntime build does not offer is dropped with ONE warning
per provider and process (not one per model version); the CPU provider is always
appended last, so a session always opens. The providers a session really uses
(``session.get_providers()``) are logged per load and exposed on the servable.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Sequence

from streamserve.errors import InvalidArgument

log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
_SUFFIX = "ExecutionProvider"
ALIASES = {
    "cpu": CPU,
    "cuda": "CUDAExecutionProvider",
    "gpu": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "trt": "TensorrtExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "rocm": "ROCMExecutionProvider",
    "migraphx": "MIGraphXExecutionProvider",
    "dml": "DmlExecutionProvider",
    "directml": "DmlExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
}

_warned: set[str] = set()
_warned_lock = threading.Lock()


def parse_providers(text: str | Iterable[str]) -> tuple[str, ...]:
    """``"cuda,CPUExecutionProvider"`` or a list → canonical provider names, in order."""
    items = text.split(",") if isinstance(text, str) else list(text)
    names: list[str] = []
    for item in items:
        name = canonical_name(str(item).strip())
        if name and name not in names:
            names.append(name)
    return tuple(names)


def canonical_name(name: str) -> str:
    if not name:
        return ""
    alias = ALIASES.get(name.lower())
    if alias is not None:
        return alias
    if not name.endswith(_SUFFIX):
        raise InvalidArgument(
            f"unknown ONNX Runtime execution provider {name!r}: give a full name such as "
            f"CUDAExecutionProvider or one of {', '.join(sorted(ALIASES))}"
        )
    return name


def session_providers(requested: Sequence[str], available: Sequence[str]) -> list[str]:
    """The providers to open a session with: the available requested ones, then CPU."""
    chosen = [name for name in requested if name in available]
    if CPU not in chosen:
        chosen.append(CPU)
    return chosen


def warn_unavailable(requested: Sequence[str], used: Sequence[str], where: str) -> list[str]:
    """Warn (once per provider and process) about requested providers not in ``used``."""
    missing = [name for name in requested if name not in used]
    with _warned_lock:
        fresh = [name for name in missing if name not in _warned]
        _warned.update(fresh)
    for name in fresh:
        log.warning(
            "ONNX Runtime execution provider %s is not available on this machine; "
            "falling back to %s (first seen loading %s)",
            name,
            ", ".join(used),
            where,
        )
    return missing


def forget_warnings() -> None:
    """Tests: warn again for providers already warned about."""
    with _warned_lock:
        _warned.clear()
