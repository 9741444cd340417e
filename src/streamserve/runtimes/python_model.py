"""Custom Python models: ``<version>/model.py`` defines a class ``Model``::

    class Model:
        def load(self, version_dir: pathlib.Path) -> None: ...
        def signature(self) -> dict:
            return {"inputs": {"x": {"dtype": "float32", "shape": [-1, 4]}},
                    "outputs": {"y": {"dtype": "float32", "shape": [-1, 1]}}}
        def predict(self, inputs: dict[str, numpy.ndarray]) -> dict[str, numpy.ndarray]: ...

Optional extensions:

- ``signature()`` may return ``{"signatures": {name: {"inputs": ..., "outputs": ...,
  "method_name": ...}}}`` for several signatures; ``predict`` is then called as
  ``predict(inputs, signature_name)``.
- ``thread_safe = True`` (class attribute) lets requests call ``predict`` concurrently;
  by default calls are serialized with a lock, so model code need not be thread-safe.
- ``unload(self)`` is called when the version is unloaded.

Dtypes are numpy names (``float32``, ``int64``, ``bool`` ...) or ``string`` / ``bytes``
(object arrays of ``bytes``); a shape is a list with ``-1`` (or ``null``) for any size,
or ``null`` for unknown rank. Requests are checked against the signature before
``predict`` runs; its outputs are checked against it after (a missing or malformed
output is an ``INTERNAL`` error naming the model file).

The file is executed on load: it runs with the server's rights, so only base paths the
operator configured (start-up flags, the model config file, or — with network model
control on — paths inside ``--model_repository_root``) are ever loaded.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import sys
import threading
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from types import MappingProxyType, ModuleType
from typing import Any

import numpy as np

from streamserve.errors import Internal, InvalidArgument, StreamserveError
from streamserve.runtimes.base import (
    DEFAULT_SIGNATURE,
    PREDICT_METHOD,
    Signature,
    Tensors,
    TensorSpec,
)
from streamserve.runtimes.validation import (
    SignatureServable,
    resolve_outputs,
)

MODEL_FILE = "model.py"
_STRING_NAMES = frozenset({"string", "bytes", "str", "object", "bytes_"})
_OBJECT = np.dtype(object)


class PythonModelRuntime:
    """The :class:`~streamserve.runtimes.base.Runtime` for ``model.py`` version dirs."""

    name = "python"

    def can_load(self, version_dir: Path) -> bool:
        return (version_dir / MODEL_FILE).is_file()

    def load(self, version_dir: Path) -> PythonServable:
        path = version_dir / MODEL_FILE
        module = _import_module(path)
        try:
            model = _instantiate(module, path)
            _call_model(path, "load", model.load, version_dir)
            spec = _call_model(path, "signature", model.signature)
            return PythonServable(model, signatures_from_spec(spec, path), path, module.__name__)
        except Exception:
            sys.modules.pop(module.__name__, None)
            raise


def _import_module(path: Path) -> ModuleType:
    """Import ``path`` under a name unique to it, so two versions never share a module."""
    digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:16]
    module_name = f"streamserve_model_{digest}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise InvalidArgument(f"cannot import {path} as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses and pickling look modules up here
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(module_name, None)
        raise InvalidArgument(f"importing {path} failed: {type(exc).__name__}: {exc}") from exc
    return module


def _instantiate(module: ModuleType, path: Path) -> Any:
    model_class = getattr(module, "Model", None)
    if not inspect.isclass(model_class):
        raise InvalidArgument(f"{path} defines no class 'Model'")
    for method in ("load", "signature", "predict"):
        if not callable(getattr(model_class, method, None)):
            raise InvalidArgument(f"{path}: class Model has no method '{method}'")
    return _call_model(path, "Model()", model_class)


def _call_model(path: Path, what: str, function: Any, *args: Any) -> Any:
    try:
        return function(*args)
    except StreamserveError:
        raise
    except Exception as exc:
        raise InvalidArgument(f"{path}: {what} failed: {type(exc).__name__}: {exc}") from exc


# -- signature() → Signature ---------------------------------------------------------------


def signatures_from_spec(spec: object, path: Path) -> Mapping[str, Signature]:
    """``signature()``'s dict → signatures; ``InvalidArgument`` naming what is wrong."""
    if not isinstance(spec, Mapping):
        raise InvalidArgument(f"{path}: signature() must return a dict, got {type(spec).__name__}")
    if "signatures" in spec:
        named = spec["signatures"]
        if not isinstance(named, Mapping) or not named:
            raise InvalidArgument(f"{path}: 'signatures' must be a non-empty dict")
        items = list(named.items())
    else:
        items = [(DEFAULT_SIGNATURE, spec)]
    return MappingProxyType({name: _signature(str(name), body, path) for name, body in items})


def _signature(name: str, body: object, path: Path) -> Signature:
    where = f"{path}: signature '{name}'"
    if not isinstance(body, Mapping):
        raise InvalidArgument(f"{where} must be a dict with 'inputs' and 'outputs'")
    inputs = _tensor_specs(body.get("inputs"), f"{where} inputs")
    outputs = _tensor_specs(body.get("outputs"), f"{where} outputs")
    method = body.get("method_name", PREDICT_METHOD)
    if not isinstance(method, str):
        raise InvalidArgument(f"{where}: method_name must be a string")
    return Signature(name, MappingProxyType(inputs), MappingProxyType(outputs), method)


def _tensor_specs(tensors: object, where: str) -> dict[str, TensorSpec]:
    if not isinstance(tensors, Mapping) or not tensors:
        raise InvalidArgument(f"{where} must be a non-empty dict of name → {{dtype, shape}}")
    return {str(name): _tensor_spec(str(name), spec, where) for name, spec in tensors.items()}


def _tensor_spec(name: str, spec: object, where: str) -> TensorSpec:
    if not isinstance(spec, Mapping) or "dtype" not in spec:
        raise InvalidArgument(f"{where}: '{name}' needs a 'dtype' (and usually a 'shape')")
    return TensorSpec(
        name, parse_dtype(spec["dtype"], f"{where}: '{name}'"), _shape(spec.get("shape"), name)
    )


def parse_dtype(value: object, where: str) -> np.dtype:
    """A numpy dtype name, or ``string``/``bytes`` → object (arrays of bytes)."""
    if isinstance(value, str) and value.lower() in _STRING_NAMES:
        return _OBJECT
    try:
        dtype: np.dtype = np.dtype(value)  # type: ignore[call-overload]
    except TypeError:
        raise InvalidArgument(f"{where}: unknown dtype {value!r}") from None
    if dtype.kind not in "biufc":
        raise InvalidArgument(f"{where}: dtype {value!r} is not a number, bool or string")
    return dtype


def _shape(shape: object, name: str) -> tuple[int | None, ...] | None:
    if shape is None:
        return None
    if not isinstance(shape, Sequence) or isinstance(shape, str):
        raise InvalidArgument(f"tensor '{name}': shape must be a list, got {shape!r}")
    dims: list[int | None] = []
    for dim in shape:
        if dim is not None and (not isinstance(dim, int) or dim < -1):
            raise InvalidArgument(f"tensor '{name}': bad dimension {dim!r} (use -1 for any)")
        dims.append(None if dim is None or dim == -1 else dim)
    return tuple(dims)


# -- the servable -----------------------------------------------------------------------------


class PythonServable(SignatureServable):
    """One loaded ``model.py``; checks requests and outputs against its signatures."""

    platform = "python"  # V2 model metadata

    def __init__(
        self, model: Any, signatures: Mapping[str, Signature], path: Path, module_name: str = ""
    ) -> None:
        self._model: Any = model
        self._module_name = module_name
        self._signatures = signatures
        self._path = path
        self._pass_name = len(signatures) > 1 or DEFAULT_SIGNATURE not in signatures
        thread_safe = bool(getattr(model, "thread_safe", False))
        self._lock: AbstractContextManager[Any] = nullcontext() if thread_safe else threading.Lock()

    def predict(
        self,
        inputs: Mapping[str, np.ndarray],
        signature_name: str = DEFAULT_SIGNATURE,
        output_filter: Sequence[str] | None = None,
    ) -> Tensors:
        signature = self.checked_signature(signature_name, inputs)
        names = resolve_outputs(signature, output_filter, list(signature.outputs))
        raw = self._call(dict(inputs), signature_name)
        return {name: self._output(signature, name, raw) for name in names}

    def _call(self, inputs: Tensors, signature_name: str) -> object:
        model = self._model
        if model is None:
            raise Internal(f"{self._path}: the model was unloaded")
        with self._lock:
            try:
                if self._pass_name:
                    return model.predict(inputs, signature_name)
                return model.predict(inputs)
            except StreamserveError:
                raise
            except Exception as exc:
                raise Internal(
                    f"{self._path}: predict failed: {type(exc).__name__}: {exc}"
                ) from exc

    def _output(self, signature: Signature, name: str, raw: object) -> np.ndarray:
        if not isinstance(raw, Mapping):
            raise Internal(f"{self._path}: predict returned {type(raw).__name__}, not a dict")
        if name not in raw:
            raise Internal(
                f"{self._path}: predict returned no output '{name}' "
                f"(signature '{signature.name}' declares {', '.join(signature.outputs)})"
            )
        return conform_output(signature.outputs[name], raw[name], str(self._path))

    def close(self) -> None:
        model, self._model = self._model, None
        sys.modules.pop(self._module_name, None)
        unload = getattr(model, "unload", None)
        if callable(unload):
            unload()


def conform_output(spec: TensorSpec, value: object, source: str) -> np.ndarray:
    """``value`` as an array of ``spec``'s dtype and rank; ``Internal`` if it cannot be."""
    array = np.asarray(value)
    if spec.dtype == _OBJECT:
        array = _as_bytes_array(array)
    elif array.dtype != spec.dtype:
        if not np.can_cast(array.dtype, spec.dtype, casting="same_kind"):
            raise Internal(
                f"{source}: output '{spec.name}' is {array.dtype}, signature says {spec.dtype}"
            )
        array = array.astype(spec.dtype)
    if spec.shape is not None and array.ndim != len(spec.shape):
        raise Internal(
            f"{source}: output '{spec.name}' has shape {list(array.shape)}, signature says "
            f"rank {len(spec.shape)}"
        )
    return array


def _as_bytes_array(array: np.ndarray) -> np.ndarray:
    flat = array.ravel()
    out = np.empty(flat.shape, dtype=object)
    for index, item in enumerate(flat):
        out[index] = item if isinstance(item, bytes) else str(item).encode("utf-8")
    return out.reshape(array.shape)
