"""ONNX Runtime: ``<version>/model.onnx`` → one ``InferenceSession`` per version.

Execution providers and thread counts come from ``LoadOptions`` (server flags
``--onnx_execution_providers``, ``--tensorflow_intra_op_parallelism``,
``--tensorflow_inter_op_parallelism``), overridden per model by the ``onnx`` section of
``streamserve.json`` (:mod:`.settings`); provider fallback is in :mod:`.providers`.

The graph's inputs/outputs become the ``serving_default`` signature (method predict).
String tensors are ``object`` arrays of ``bytes`` at our boundary; onnxruntime wants
``str`` (and silently ``str()``-s bytes, giving ``"b'..'"``), so we convert both ways.

Load errors: an unparsable file is ``DATA_LOSS`` (as TF Serving reports an unreadable
SavedModel); a parsable model ORT refuses (bad graph, unknown op, unsupported input type)
is ``INVALID_ARGUMENT``. Both messages name the file and carry ORT's own error.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
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
from streamserve.runtimes.providers import (
    CPU,
    parse_providers,
    session_providers,
    warn_unavailable,
)
from streamserve.runtimes.settings import section
from streamserve.runtimes.validation import (
    SignatureServable,
    resolve_outputs,
)

log = logging.getLogger(__name__)

MODEL_FILE = "model.onnx"
THREADS_ENV = "STREAMSERVE_ORT_THREADS"
# A model whose batch-1 run is this fast gets one intra-op thread (see _runs_in_microseconds)
TINY_RUN_SECONDS = 50e-6
TINY_RUN_TRIES = 5

_ORT_TENSOR_TYPES: dict[str, np.dtype] = {
    f"tensor({onnx_name})": np.dtype(numpy_name)
    for onnx_name, numpy_name in [
        ("float", "float32"),
        ("double", "float64"),
        ("float16", "float16"),
        ("int8", "int8"),
        ("int16", "int16"),
        ("int32", "int32"),
        ("int64", "int64"),
        ("uint8", "uint8"),
        ("uint16", "uint16"),
        ("uint32", "uint32"),
        ("uint64", "uint64"),
        ("bool", "bool"),
        ("string", "object"),
    ]
}
_OBJECT = np.dtype(object)


def intra_op_threads(options: LoadOptions | None = None) -> int:
    """Threads per session: ``LoadOptions`` wins, then ``$STREAMSERVE_ORT_THREADS``, else 0."""
    if options is not None and options.intra_op_threads > 0:
        return options.intra_op_threads
    raw = os.environ.get(THREADS_ENV, "").strip()
    if not raw:
        return 0
    try:
        threads = int(raw)
    except ValueError:
        raise FailedPrecondition(f"{THREADS_ENV}={raw!r} is not an integer") from None
    if threads < 0:
        raise FailedPrecondition(f"{THREADS_ENV}={raw!r} must be >= 0 (0 = ORT decides)")
    return threads


class OnnxRuntime:
    """The :class:`~streamserve.runtimes.base.Runtime` for ``model.onnx`` version dirs."""

    name = "onnxruntime"

    def __init__(self, options: LoadOptions | None = None) -> None:
        self._options = options

    def can_load(self, version_dir: Path) -> bool:
        return (version_dir / MODEL_FILE).is_file()

    def load(self, version_dir: Path) -> OnnxServable:
        options = model_options(self._options or LoadOptions(), version_dir)
        path = version_dir / MODEL_FILE
        session = _open_session(path, options)
        if intra_op_threads(options) == 0 and _runs_in_microseconds(session):
            log.info("ONNX model %s runs in microseconds: one intra-op thread", path)
            session = _open_session(path, replace(options, intra_op_threads=1))
        log.info("ONNX model %s runs on %s", path, ", ".join(session.get_providers()))
        return OnnxServable(session)


def model_options(options: LoadOptions, version_dir: Path) -> LoadOptions:
    """``options`` with the model's ``streamserve.json`` ``onnx`` section applied."""
    settings = section(version_dir, "onnx")
    unknown = set(settings) - {"execution_providers", "intra_op_threads", "inter_op_threads"}
    if unknown:
        raise InvalidArgument(f"streamserve.json: unknown onnx setting(s) {sorted(unknown)}")
    overrides: dict[str, Any] = {}
    if "execution_providers" in settings:
        overrides["execution_providers"] = parse_providers(settings["execution_providers"])
    for key in ("intra_op_threads", "inter_op_threads"):
        if key in settings:
            value = settings[key]
            if not isinstance(value, int) or value < 0:
                raise InvalidArgument(f"streamserve.json: onnx.{key} must be an integer >= 0")
            overrides[key] = value
    return replace(options, **overrides)


def _session_options(options: LoadOptions) -> Any:
    import onnxruntime as ort

    session_options = ort.SessionOptions()
    session_options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session_options.intra_op_num_threads = intra_op_threads(options)
    session_options.inter_op_num_threads = max(options.inter_op_threads, 0)
    if options.inter_op_threads > 1:
        session_options.execution_mode = ort.ExecutionMode.ORT_PARALLEL
    # Spinning worker threads burn a core after every run; on a box shared with Kafka and
    # the stream processor that costs more than the wake-up latency it saves.
    session_options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return session_options


def _runs_in_microseconds(session: Any) -> bool:
    """Whether a CPU session's batch-1 run of zeros takes under :data:`TINY_RUN_SECONDS`.

    For such a model, ORT handing part of each run to its intra-op pool (whose threads
    sleep between runs, see ``allow_spinning``) costs more than it saves: measured on the
    benchmark's 64x64 model at batch 32, one thread ran in 12 us against 21 us with two.
    Inputs it cannot make up (strings, unknown rank) or a failing run: False."""
    if tuple(session.get_providers()) != (CPU,):
        return False
    feeds = {}
    for arg in session.get_inputs():
        dtype = _ORT_TENSOR_TYPES.get(arg.type)
        if dtype is None or dtype == _OBJECT or arg.shape is None:
            return False
        shape = [dim if isinstance(dim, int) and dim >= 0 else 1 for dim in arg.shape]
        feeds[arg.name] = np.zeros(shape, dtype)
    fastest = math.inf
    try:
        for _ in range(TINY_RUN_TRIES):
            started = time.perf_counter()
            session.run(None, feeds)
            fastest = min(fastest, time.perf_counter() - started)
    except Exception:  # a model zeros do not suit: keep ORT's own choice
        return False
    return fastest < TINY_RUN_SECONDS


def _open_session(path: Path, options: LoadOptions) -> Any:
    import onnxruntime as ort

    requested = list(options.execution_providers)
    providers = session_providers(requested, ort.get_available_providers())
    session = _create_session(ort, path, _session_options(options), providers)
    used = list(session.get_providers())
    if requested:
        warn_unavailable(requested, used, str(path))
    return session


def _create_session(ort: Any, path: Path, session_options: Any, providers: list[str]) -> Any:
    try:
        return ort.InferenceSession(str(path), sess_options=session_options, providers=providers)
    except Exception as error:  # ORT's pybind errors share no base class but Exception
        if not path.is_file():
            raise FailedPrecondition(f"ONNX model file {path} does not exist") from error
        code = Code.DATA_LOSS if type(error).__name__ == "InvalidProtobuf" else None
        raise StreamserveError(
            f"cannot load ONNX model {path}: {error}", code or Code.INVALID_ARGUMENT
        ) from error


@dataclass(frozen=True)
class _Plan:
    """What ``predict`` needs, computed once at load."""

    signature: Signature
    output_names: list[str]
    string_inputs: frozenset[str]
    string_outputs: frozenset[str]
    shared_dims: tuple[tuple[str, tuple[tuple[str, int], ...]], ...]  # symbol → (input, axis)s


class OnnxServable(SignatureServable):
    """One loaded ``model.onnx``. ``predict`` is thread-safe (ORT sessions are)."""

    def __init__(self, session: Any) -> None:
        self.execution_providers: tuple[str, ...] = tuple(session.get_providers())
        self._session_run: Callable[..., list[np.ndarray]] | None = _session_run(
            session, self.execution_providers
        )
        signature = _signature_from_session(session)
        self._plan = _Plan(
            signature=signature,
            output_names=list(signature.outputs),
            string_inputs=_string_names(signature.inputs),
            string_outputs=_string_names(signature.outputs),
            shared_dims=_shared_symbolic_dims(session),
        )
        self._signatures = MappingProxyType({DEFAULT_SIGNATURE: signature})

    def predict(
        self,
        inputs: Mapping[str, np.ndarray],
        signature_name: str = DEFAULT_SIGNATURE,
        output_filter: Sequence[str] | None = None,
    ) -> Tensors:
        plan = self._plan
        signature = self.checked_signature(signature_name, inputs)
        if plan.shared_dims:
            _check_shared_dims(plan.shared_dims, inputs)
        output_names = resolve_outputs(signature, output_filter, plan.output_names)
        feeds = inputs if isinstance(inputs, dict) else dict(inputs)
        if plan.string_inputs:
            feeds = dict(inputs)
            for name in plan.string_inputs:
                feeds[name] = to_str_array(name, inputs[name])
        results = self._run(output_names, feeds)
        outputs = dict(zip(output_names, results, strict=True))
        if plan.string_outputs:
            for name in plan.string_outputs.intersection(outputs):
                outputs[name] = to_bytes_array(outputs[name])
        return outputs

    def _run(self, output_names: list[str], feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        session_run = self._session_run
        if session_run is None:
            raise FailedPrecondition("the ONNX servable was closed (model version unloaded)")
        try:
            return session_run(output_names, feeds, None)  # None: no RunOptions
        except Exception as error:
            # ORT's own shape checks (e.g. inner dims it learns at run time) land here.
            if type(error).__name__ == "InvalidArgument":
                raise InvalidArgument(f"onnxruntime rejected the request: {error}") from error
            raise Internal(f"onnxruntime failed: {error}") from error

    def close(self) -> None:
        self._session_run = None  # ORT frees the session when the last reference goes


def _session_run(session: Any, providers: tuple[str, ...]) -> Callable[..., list[np.ndarray]]:
    """``session.run``, or on CPU the C++ session's own ``run`` under it: ORT's Python
    wrapper re-checks the input names (the signature check has done that, and the C++
    side checks them again) and falls back to other providers on a provider failure,
    which only a GPU (or other accelerator) provider can have."""
    inner_run = getattr(getattr(session, "_sess", None), "run", None)
    if providers == (CPU,) and callable(inner_run):
        return inner_run  # type: ignore[no-any-return]
    return session.run  # type: ignore[no-any-return]


def _signature_from_session(session: Any) -> Signature:
    inputs = {arg.name: _tensor_spec(arg, "input") for arg in session.get_inputs()}
    # Non-tensor outputs (sequences/maps, e.g. skl2onnx's ZipMap) cannot cross our wire
    # protocols; they are left out of the signature rather than failing the whole model.
    outputs = {
        arg.name: _tensor_spec(arg, "output")
        for arg in session.get_outputs()
        if arg.type in _ORT_TENSOR_TYPES
    }
    if not outputs:
        raise InvalidArgument("the ONNX model has no tensor outputs of a supported type")
    return Signature(
        name=DEFAULT_SIGNATURE,
        inputs=MappingProxyType(inputs),
        outputs=MappingProxyType(outputs),
        method_name=PREDICT_METHOD,
    )


def _tensor_spec(arg: Any, role: str) -> TensorSpec:
    dtype = _ORT_TENSOR_TYPES.get(arg.type)
    if dtype is None:
        raise InvalidArgument(
            f"ONNX {role} '{arg.name}' has type {arg.type}, which streamserve cannot serve "
            f"(supported: {', '.join(sorted(_ORT_TENSOR_TYPES))})"
        )
    shape = arg.shape
    if shape is None:
        return TensorSpec(arg.name, dtype, None)
    return TensorSpec(
        arg.name, dtype, tuple(d if isinstance(d, int) and d >= 0 else None for d in shape)
    )


def _shared_symbolic_dims(session: Any) -> tuple[tuple[str, tuple[tuple[str, int], ...]], ...]:
    """Symbolic dims (e.g. ``N``) named by more than one input axis: they must agree."""
    places: dict[str, list[tuple[str, int]]] = {}
    for arg in session.get_inputs():
        for axis, dim in enumerate(arg.shape or ()):
            if isinstance(dim, str) and dim:
                places.setdefault(dim, []).append((arg.name, axis))
    return tuple((symbol, tuple(where)) for symbol, where in places.items() if len(where) > 1)


def _check_shared_dims(
    shared_dims: tuple[tuple[str, tuple[tuple[str, int], ...]], ...],
    inputs: Mapping[str, np.ndarray],
) -> None:
    # ORT does not check this across independent graph branches; we do, so a request
    # whose inputs disagree on the batch size fails instead of returning mismatched rows.
    for symbol, places in shared_dims:
        first_name, first_axis = places[0]
        size = inputs[first_name].shape[first_axis]
        for name, axis in places[1:]:
            if inputs[name].shape[axis] != size:
                raise InvalidArgument(
                    f"inputs '{first_name}' and '{name}' disagree on dimension '{symbol}' "
                    f"({size} vs {inputs[name].shape[axis]})"
                )


def _string_names(specs: Mapping[str, TensorSpec]) -> frozenset[str]:
    return frozenset(name for name, spec in specs.items() if spec.dtype == _OBJECT)


def to_str_array(name: str, array: np.ndarray) -> np.ndarray:
    """Object/bytes_/str_ array → object array of ``str`` (UTF-8); bad bytes name the input."""
    if array.dtype.kind == "U":
        return array.astype(object)
    flat = array.ravel()
    out = np.empty(flat.shape, dtype=object)
    for index, item in enumerate(flat):
        if isinstance(item, bytes):
            try:
                out[index] = item.decode("utf-8")
            except UnicodeDecodeError as error:
                raise InvalidArgument(
                    f"input '{name}': element {_position(array.shape, index)} is not valid "
                    f"UTF-8 ({error.reason} at byte {error.start}); ONNX string tensors hold text"
                ) from None
        elif isinstance(item, str):
            out[index] = item
        else:
            raise InvalidArgument(
                f"input '{name}': element {_position(array.shape, index)} is "
                f"{type(item).__name__}, expected bytes"
            )
    return out.reshape(array.shape)


def to_bytes_array(array: np.ndarray) -> np.ndarray:
    """ORT's object array of ``str`` → object array of UTF-8 ``bytes``."""
    flat = array.ravel()
    out = np.empty(flat.shape, dtype=object)
    for index, item in enumerate(flat):
        out[index] = item.encode("utf-8") if isinstance(item, str) else bytes(item)
    return out.reshape(array.shape)


def _position(shape: tuple[int, ...], flat_index: int) -> str:
    if len(shape) <= 1:
        return str(flat_index)
    return str(tuple(int(i) for i in np.unravel_index(flat_index, shape)))
