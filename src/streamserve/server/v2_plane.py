"""KServe V2 semantics shared by the REST (:mod:`~streamserve.server.v2_rest`) and gRPC
(:mod:`~streamserve.server.v2_grpc`) adapters: metadata views, readiness, repository
control and request addressing, over one :class:`~streamserve.server.core.InferenceCore`.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import streamserve
from streamserve.errors import InvalidArgument, NotFound, StreamserveError
from streamserve.repository import ModelConfig, VersionState
from streamserve.repository.routing import RoutingKey
from streamserve.runtimes.base import DEFAULT_SIGNATURE, Signature, TensorSpec
from streamserve.server.core import InferenceCore, ModelRef
from streamserve.tensors import dtype_to_v2

if TYPE_CHECKING:
    from streamserve.server.context import ServerContext

PROTOCOL = "v2"
ROUTING_KEY_HEADER = "x-routing-key"
SERVER_NAME = "streamserve"
EXTENSIONS = ("binary_tensor_data", "model_repository", "parameters")
LOAD_TIMEOUT_SECONDS = 300.0

_INDEX_STATE = {
    VersionState.START: "LOADING",
    VersionState.LOADING: "LOADING",
    VersionState.AVAILABLE: "READY",
    VersionState.UNLOADING: "UNLOADING",
    VersionState.END: "UNAVAILABLE",
    VersionState.UNKNOWN: "UNAVAILABLE",
}


@dataclass(frozen=True)
class TensorView:
    name: str
    datatype: str
    shape: list[int]  # -1 = any size


@dataclass(frozen=True)
class MetadataView:
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorView]
    outputs: list[TensorView]


@dataclass(frozen=True)
class IndexEntry:
    name: str
    version: str
    state: str
    reason: str


class V2Plane:
    """V2 semantics over one :class:`InferenceCore` (one per server, thread-unsafe parts
    run on the server's loop; repository changes run in worker threads)."""

    def __init__(self, core: InferenceCore) -> None:
        self.core = core
        self.manager = core.manager
        self._unloaded: dict[str, ModelConfig] = {}
        self._repository_lock = asyncio.Lock()

    # -- addressing ---------------------------------------------------------------------

    @staticmethod
    def ref(name: str, version: str, routing_key: RoutingKey = None) -> ModelRef:
        return ModelRef(name, parse_version(name, version), None, routing_key)

    # -- health -------------------------------------------------------------------------

    def server_ready(self) -> bool:
        """Ready when every configured model has an AVAILABLE version."""
        return all(self._has_available(name) for name in self.manager.model_names())

    def model_ready(self, name: str, version: str) -> bool:
        number = parse_version(name, version)
        try:
            statuses = self.manager.status(name, version=number)
        except StreamserveError:
            return False
        return any(status.state == VersionState.AVAILABLE for status in statuses)

    def _has_available(self, name: str) -> bool:
        return self.model_ready(name, "")

    @staticmethod
    def server_metadata() -> dict[str, Any]:
        return {
            "name": SERVER_NAME,
            "version": streamserve.__version__,
            "extensions": list(EXTENSIONS),
        }

    # -- metadata -----------------------------------------------------------------------

    def metadata(self, name: str, version: str) -> MetadataView:
        meta = self.core.metadata(self.ref(name, version))
        signature = choose_signature(meta.signatures, "")
        if version:
            versions = [str(meta.version)]
        else:
            statuses = self.manager.status(name)
            versions = [str(s.version) for s in statuses if s.state == VersionState.AVAILABLE]
        return MetadataView(
            name=meta.name,
            versions=versions,
            platform=self._platform(name, meta.platform),
            inputs=[_tensor_view(spec) for spec in signature.inputs.values()],
            outputs=[_tensor_view(spec) for spec in signature.outputs.values()],
        )

    def _platform(self, name: str, runtime_platform: str = "") -> str:
        try:
            platform = self.manager.config(name).platform or runtime_platform
        except StreamserveError:
            platform = runtime_platform
        return {"onnx": "onnxruntime_onnx", "tensorflow": "tensorflow_savedmodel"}.get(
            platform, platform or "onnxruntime_onnx"
        )

    # -- repository extension -------------------------------------------------------------

    def repository_index(self, ready_only: bool = False) -> list[IndexEntry]:
        entries: list[IndexEntry] = []
        for name in self.manager.model_names():
            try:
                statuses = self.manager.status(name)
            except StreamserveError as exc:
                entries.append(IndexEntry(name, "", "UNAVAILABLE", exc.message))
                continue
            for status in statuses:
                state = _INDEX_STATE.get(status.state, "UNAVAILABLE")
                entries.append(IndexEntry(name, str(status.version), state, status.error_message))
        entries.extend(IndexEntry(name, "", "UNAVAILABLE", "unloaded") for name in self._unloaded)
        if ready_only:
            entries = [entry for entry in entries if entry.state == "READY"]
        return sorted(entries, key=lambda e: (e.name, e.version))

    async def load(self, name: str, base_path: str | None = None) -> None:
        """Load (add) a model and wait until a version is AVAILABLE.

        A model that is configured or was unloaded comes back with its own config;
        ``base_path`` adds a new model (or moves an existing one).
        """
        async with self._repository_lock:
            configs = {n: self.manager.config(n) for n in self.manager.model_names()}
            config = configs.get(name) or self._unloaded.get(name)
            if base_path:
                config = ModelConfig(name, Path(base_path).absolute())
            if config is None:
                raise NotFound(
                    f"Unknown model {name!r}: it is not configured; give "
                    'parameters {"base_path": "/path/to/model"} to add it'
                )
            if configs.get(name) == config and self._has_available(name):
                return
            configs[name] = config
            await asyncio.wait_for(
                asyncio.to_thread(self.core.reload_config, list(configs.values())),
                LOAD_TIMEOUT_SECONDS,
            )
            self._unloaded.pop(name, None)

    async def unload(self, name: str) -> None:
        """Unload every version of a model and forget it until it is loaded again."""
        async with self._repository_lock:
            names = self.manager.model_names()
            if name not in names:
                if name in self._unloaded:
                    return
                raise NotFound(f"Unknown model {name!r}: it is not loaded")
            config = self.manager.config(name)
            remaining = [self.manager.config(n) for n in names if n != name]
            await asyncio.to_thread(self.core.reload_config, remaining)
            self._unloaded[name] = config


def parse_version(name: str, version: str) -> int | None:
    if not version:
        return None
    try:
        number = int(version)
    except ValueError:
        number = -1
    if number < 0:
        raise InvalidArgument(
            f"Invalid version {version!r} for model {name!r}: expected a non-negative integer"
        )
    return number


def choose_signature(signatures: Mapping[str, Signature], requested: str) -> Signature:
    """The requested signature, else ``serving_default``, else the only one."""
    name = requested or DEFAULT_SIGNATURE
    signature = signatures.get(name)
    if signature is None and not requested and len(signatures) == 1:
        signature = next(iter(signatures.values()))
    if signature is None:
        available = ", ".join(sorted(signatures))
        raise InvalidArgument(f"Unknown signature {name!r}; the model has: {available}")
    return signature


def _tensor_view(spec: TensorSpec) -> TensorView:
    shape = [-1 if dim is None else int(dim) for dim in spec.shape] if spec.shape else [-1]
    return TensorView(spec.name, dtype_to_v2(spec.dtype), shape)


_planes: weakref.WeakKeyDictionary[InferenceCore, V2Plane] = weakref.WeakKeyDictionary()


def plane_for(context: ServerContext) -> V2Plane:
    """One plane per server (per core), shared by the V2 REST and gRPC adapters."""
    plane = _planes.get(context.core)
    if plane is None:
        plane = _planes[context.core] = V2Plane(context.core)
    return plane


__all__ = [
    "PROTOCOL",
    "ROUTING_KEY_HEADER",
    "IndexEntry",
    "MetadataView",
    "TensorView",
    "V2Plane",
    "choose_signature",
    "parse_version",
    "plane_for",
]
