"""TensorFlow SavedModel runtime (optional ``streamserve[tensorflow]`` extra).

``<version>/saved_model.pb`` is loaded with ``tf.saved_model.load`` (the ``serve``
meta graph when there are several); every entry of the SavedModel's ``signatures``
becomes a :class:`Signature` with its aliases, dtypes and shapes. The ``method_name``
(predict / classify / regress) is read from the ``SignatureDef`` in ``saved_model.pb``,
since TF 2's loaded functions do not carry it. Classify and regress signatures (as in TF
Serving's ``half_plus_two``) take ``inputs``: a DT_STRING tensor of serialized
``tf.Example`` protos; callers build those and run them through ``predict``.

``tensorflow`` is imported lazily, on the first load: importing it takes seconds.
Load errors: an unparsable ``saved_model.pb`` is ``DATA_LOSS``; a SavedModel TensorFlow
refuses to load is ``INVALID_ARGUMENT``; both name the directory and carry TF's error.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np

from streamserve.errors import Code, FailedPrecondition, Internal, InvalidArgument, StreamserveError
from streamserve.runtimes.base import (
    DEFAULT_SIGNATURE,
    PREDICT_METHOD,
    LoadOptions,
    Signature,
    Tensors,
    TensorSpec,
)
from streamserve.runtimes.validation import (
    SignatureServable,
    resolve_outputs,
)

SAVED_MODEL_FILE = "saved_model.pb"
SERVE_TAG = "serve"


def import_tensorflow() -> Any:
    try:
        import tensorflow as tf
    except ImportError as error:
        raise FailedPrecondition(
            f"TensorFlow SavedModels need tensorflow ({error}); install streamserve[tensorflow]"
        ) from None
    return tf


class TensorFlowRuntime:
    """The :class:`~streamserve.runtimes.base.Runtime` for ``saved_model.pb`` version dirs.

    ``LoadOptions`` thread settings are not applied: TensorFlow's thread pools are
    process-wide and fixed at its first use.
    """

    name = "tensorflow"

    def __init__(self, options: LoadOptions | None = None) -> None:
        self._options = options

    def can_load(self, version_dir: Path) -> bool:
        return (version_dir / SAVED_MODEL_FILE).is_file()

    def load(self, version_dir: Path) -> TensorFlowServable:
        tf = import_tensorflow()
        tags, methods = _read_signature_defs(version_dir)
        try:
            loaded = tf.saved_model.load(str(version_dir), tags=tags)
        except Exception as error:  # TF raises many unrelated types for a bad SavedModel
            raise InvalidArgument(
                f"cannot load TensorFlow SavedModel {version_dir}: {error}"
            ) from error
        return TensorFlowServable(tf, loaded, methods)


def _read_signature_defs(version_dir: Path) -> tuple[list[str] | None, dict[str, str]]:
    """The ``serve`` meta graph's tags and each signature's ``method_name``."""
    from google.protobuf.message import DecodeError
    from tensorflow.core.protobuf import saved_model_pb2

    path = version_dir / SAVED_MODEL_FILE
    saved_model = saved_model_pb2.SavedModel()
    try:
        saved_model.ParseFromString(path.read_bytes())
    except (OSError, DecodeError) as error:
        raise StreamserveError(f"cannot parse {path}: {error}", Code.DATA_LOSS) from None
    if not saved_model.meta_graphs:
        raise StreamserveError(f"{path} holds no meta graph", Code.DATA_LOSS)
    graphs = saved_model.meta_graphs
    chosen = next((g for g in graphs if SERVE_TAG in g.meta_info_def.tags), graphs[0])
    tags = list(chosen.meta_info_def.tags) or None
    methods = {name: sig.method_name for name, sig in chosen.signature_def.items()}
    return tags, methods


class TensorFlowServable(SignatureServable):
    """One loaded SavedModel. ``predict`` is thread-safe (TF functions are; they drop the GIL)."""

    def __init__(self, tf: Any, loaded: Any, methods: Mapping[str, str]) -> None:
        self._tf = tf
        self._loaded: Any = loaded
        self._functions = dict(loaded.signatures)
        if not self._functions:
            raise InvalidArgument("the SavedModel has no signatures to serve")
        self._signatures = MappingProxyType(
            {
                name: _signature(tf, name, function, methods.get(name) or PREDICT_METHOD)
                for name, function in self._functions.items()
            }
        )
        self._all_outputs = {name: list(sig.outputs) for name, sig in self._signatures.items()}
        self._input_dtypes = {
            name: {
                alias: spec.dtype for alias, spec in function.structured_input_signature[1].items()
            }
            for name, function in self._functions.items()
        }

    def predict(
        self,
        inputs: Mapping[str, np.ndarray],
        signature_name: str = DEFAULT_SIGNATURE,
        output_filter: Sequence[str] | None = None,
    ) -> Tensors:
        signature = self.checked_signature(signature_name, inputs)
        output_names = resolve_outputs(signature, output_filter, self._all_outputs[signature_name])
        if self._loaded is None:
            raise FailedPrecondition("the TensorFlow servable was closed (model version unloaded)")
        results = self._call(signature, inputs)
        return {name: _to_numpy(results[name]) for name in output_names}

    def _call(self, signature: Signature, inputs: Mapping[str, np.ndarray]) -> Any:
        tf = self._tf
        dtypes = self._input_dtypes[signature.name]
        try:
            feeds = {
                name: tf.constant(_tf_ready(array), dtype=dtypes[name])
                for name, array in inputs.items()
            }
            return self._functions[signature.name](**feeds)
        except tf.errors.InvalidArgumentError as error:
            raise InvalidArgument(
                f"TensorFlow rejected the request for signature '{signature.name}': {error.message}"
            ) from error
        except tf.errors.OpError as error:
            raise Internal(
                f"TensorFlow failed in signature '{signature.name}': {error.message}"
            ) from error

    def close(self) -> None:
        self._loaded = None
        self._functions = {}


def _signature(tf: Any, name: str, function: Any, method_name: str) -> Signature:
    input_specs = function.structured_input_signature[1]
    inputs = {
        alias: _tensor_spec(tf, alias, spec.dtype, spec.shape)
        for alias, spec in input_specs.items()
    }
    outputs = {
        alias: _tensor_spec(tf, alias, tensor.dtype, tensor.shape)
        for alias, tensor in function.structured_outputs.items()
    }
    return Signature(name, MappingProxyType(inputs), MappingProxyType(outputs), method_name)


def _tensor_spec(tf: Any, alias: str, dtype: Any, shape: Any) -> TensorSpec:
    numpy_dtype = np.dtype(object) if dtype == tf.string else np.dtype(dtype.as_numpy_dtype)
    if shape.rank is None:
        return TensorSpec(alias, numpy_dtype, None)
    return TensorSpec(alias, numpy_dtype, tuple(shape.as_list()))


def _tf_ready(array: np.ndarray) -> np.ndarray:
    # TF takes object arrays of bytes/str as DT_STRING; numpy str_ arrays must become bytes.
    if array.dtype.kind == "U":
        return np.char.encode(array, "utf-8").astype(object)
    return array


def _to_numpy(tensor: Any) -> np.ndarray:
    return np.asarray(tensor.numpy())
