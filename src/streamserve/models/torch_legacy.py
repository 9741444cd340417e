"""Read a legacy (pre-zip) PyTorch ``.pth`` state dict with numpy alone.

The legacy format is a run of pickles: magic number, protocol version, system
info, the state dict (tensors point at storages through persistent ids), the
list of storage keys, then each storage's raw bytes prefixed by its element
count. Only the classes a state dict needs are allowed through the unpickler,
so a hostile file cannot run code.
"""

from __future__ import annotations

import collections
import io
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C

_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


@dataclass
class _StorageRef:
    key: str
    dtype: type


@dataclass
class _TensorRef:
    storage: _StorageRef
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor_v2(
    storage: _StorageRef, offset: int, size: Any, stride: Any, *_: Any
) -> _TensorRef:
    return _TensorRef(storage, int(offset), tuple(size), tuple(stride))


class _StateDictUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor_v2
        if module == "torch" and name in _STORAGE_DTYPES:
            return _STORAGE_DTYPES[name]
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a state dict")

    def persistent_load(self, pid: Any) -> _StorageRef:
        kind, storage_type, key, *_ = pid
        if kind != "storage":
            raise pickle.UnpicklingError(f"unexpected persistent id {kind!r}")
        return _StorageRef(str(key), storage_type)


def _read_storages(stream: BinaryIO, refs: dict[str, _StorageRef]) -> dict[str, np.ndarray]:
    keys = _StateDictUnpickler(stream).load()
    storages = {}
    for key in keys:
        (count,) = struct.unpack("<q", stream.read(8))
        dtype = np.dtype(refs[key].dtype)
        storages[key] = np.frombuffer(stream.read(count * dtype.itemsize), dtype=dtype)
    return storages


def _materialise(ref: _TensorRef, storage: np.ndarray) -> np.ndarray:
    strides = tuple(s * storage.itemsize for s in ref.stride)
    view = np.lib.stride_tricks.as_strided(storage[ref.offset :], ref.size, strides)
    return np.array(view, copy=True)


def load_legacy_state_dict(path: Path) -> dict[str, np.ndarray]:
    """Return ``{name: array}`` for every tensor in a legacy PyTorch state dict."""
    with path.open("rb") as handle:
        stream = io.BytesIO(handle.read())
    if _StateDictUnpickler(stream).load() != LEGACY_MAGIC:
        raise ValueError(
            f"{path} is not a legacy PyTorch file (zip-format files are not supported)"
        )
    _StateDictUnpickler(stream).load()  # protocol version
    _StateDictUnpickler(stream).load()  # sys info
    state = _StateDictUnpickler(stream).load()
    refs = {t.storage.key: t.storage for t in state.values() if isinstance(t, _TensorRef)}
    storages = _read_storages(stream, refs)
    return {
        name: _materialise(t, storages[t.storage.key])
        for name, t in state.items()
        if isinstance(t, _TensorRef)
    }
