"""The runtime contract: load a version directory into a servable.

A :class:`Runtime` turns ``base_path/<version>/`` into a :class:`Servable` with
named, typed :class:`Signature` s. The model server and the stream processor's
embedded mode both load models only through this interface.

Tensors are numpy arrays. String tensors (TF ``DT_STRING``, V2 ``BYTES``) are
numpy ``object`` arrays whose elements are ``bytes``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

DEFAULT_SIGNATURE = "serving_default"
PREDICT_METHOD = "tensorflow/serving/predict"
CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"

Tensors = dict[str, np.ndarray]


@dataclass(frozen=True)
class TensorSpec:
    """Name, numpy dtype (``object`` for strings) and shape (``None`` = any size)."""

    name: str
    dtype: np.dtype
    shape: tuple[int | None, ...] | None  # None = unknown rank


@dataclass(frozen=True)
class Signature:
    name: str
    inputs: Mapping[str, TensorSpec]
    outputs: Mapping[str, TensorSpec]
    method_name: str = PREDICT_METHOD


@runtime_checkable
class Servable(Protocol):
    """One loaded model version. ``predict`` is thread-safe and may release the GIL."""

    @property
    def signatures(self) -> Mapping[str, Signature]: ...

    def predict(
        self,
        inputs: Mapping[str, np.ndarray],
        signature_name: str = DEFAULT_SIGNATURE,
        output_filter: Sequence[str] | None = None,
    ) -> Tensors:
        """Run one signature. Raises ``InvalidArgument`` for wrong names/dtypes/shapes."""
        ...

    def close(self) -> None: ...


@runtime_checkable
class Runtime(Protocol):
    name: str

    def can_load(self, version_dir: Path) -> bool: ...

    def load(self, version_dir: Path) -> Servable:
        """Load a version dir; raise ``StreamserveError`` with a clear message on failure."""
        ...


def providers_of(servable: object) -> tuple[str, ...]:
    """The execution providers a servable runs on (``()`` when its runtime names none),
    looking through wrappers (``processing.json``) that expose ``inner``."""
    seen = 0
    while servable is not None and seen < 8:
        providers = getattr(servable, "execution_providers", None)
        if providers:
            return tuple(providers)
        servable, seen = getattr(servable, "inner", None), seen + 1
    return ()


def platform_of(servable: object) -> str:
    """The platform name a servable's runtime declares (``""`` when none), looking
    through wrappers that expose ``inner``."""
    seen = 0
    while servable is not None and seen < 8:
        platform = getattr(servable, "platform", None)
        if isinstance(platform, str) and platform:
            return platform
        servable, seen = getattr(servable, "inner", None), seen + 1
    return ""


@dataclass
class LoadOptions:
    """Knobs every runtime understands; runtimes ignore what does not apply."""

    intra_op_threads: int = 0  # 0 = runtime default
    inter_op_threads: int = 0  # 0 = runtime default
    # ONNX Runtime providers in order of preference; () = CPU only
    execution_providers: tuple[str, ...] = ()
    extra: dict[str, object] = field(default_factory=dict)
