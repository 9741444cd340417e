"""scikit-learn models as saved: ``<version>/model.joblib`` or ``<version>/model.pkl``.

Needs the ``sklearn`` extra (``pip install 'streamserve[sklearn]'``: scikit-learn and
joblib). Any fitted estimator or ``Pipeline`` works; the file is unpickled on load, so —
as for ``model.py`` — only base paths the operator configured are ever loaded.

Signatures (method predict), one float input ``inputs`` of shape ``[-1, n_features_in_]``:

- ``serving_default`` → ``estimator.predict``: output ``predictions``
  (``[-1]``, or ``[-1, n_outputs]`` for multi-output estimators);
- ``predict_proba`` → ``estimator.predict_proba``, where the estimator has it: output
  ``probabilities`` (``[-1, n_classes]``).

The feature count comes from ``n_features_in_``; the input dtype is ``float64`` (what
scikit-learn computes in), or ``float32`` / another number type given as
``{"sklearn": {"input_dtype": "float32"}}`` in ``streamserve.json`` (see
:mod:`.settings`). Output dtypes and ranks are learned by one probe call on zeros at
load (class labels that are strings become ``bytes``). An estimator fitted on a
DataFrame (``feature_names_in_``) gets one with those column names when pandas is
installed, so scikit-learn does not warn on every call.

XGBoost: an ``XGBClassifier``/``XGBRegressor`` saved with joblib is a scikit-learn
estimator and is served here when xgboost is installed; XGBoost's native JSON/UBJ files
are not (wrap ``xgboost.Booster`` in a ``model.py``).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np

from streamserve.errors import InvalidArgument, MissingExtra, StreamserveError
from streamserve.runtimes.base import (
    DEFAULT_SIGNATURE,
    Signature,
    Tensors,
    TensorSpec,
)
from streamserve.runtimes.python_model import conform_output, parse_dtype
from streamserve.runtimes.settings import section
from streamserve.runtimes.validation import (
    SignatureServable,
    resolve_outputs,
)

MODEL_FILES = ("model.joblib", "model.pkl")
INPUT_NAME = "inputs"
PREDICT_OUTPUT = "predictions"
PROBA_SIGNATURE = "predict_proba"
PROBA_OUTPUT = "probabilities"
_FLOAT64 = np.dtype(np.float64)


def model_file(version_dir: Path) -> Path | None:
    """The version's scikit-learn model file, if it has one."""
    return next((version_dir / n for n in MODEL_FILES if (version_dir / n).is_file()), None)


class SklearnRuntime:
    """The :class:`~streamserve.runtimes.base.Runtime` for scikit-learn version dirs."""

    name = "sklearn"

    def can_load(self, version_dir: Path) -> bool:
        return model_file(version_dir) is not None

    def load(self, version_dir: Path) -> SklearnServable:
        path = model_file(version_dir)
        if path is None:
            raise InvalidArgument(f"no {' or '.join(MODEL_FILES)} in {version_dir}")
        estimator = _unpickle(path)
        dtype = _input_dtype(version_dir)
        return SklearnServable(estimator, _methods(estimator, path, dtype), path)


def _unpickle(path: Path) -> Any:
    for module in ("sklearn", "joblib"):
        if importlib.util.find_spec(module) is None:
            raise MissingExtra("sklearn", module, f"serving {path}")
    import joblib

    try:
        estimator = joblib.load(path)
    except Exception as exc:
        raise InvalidArgument(f"cannot load {path}: {type(exc).__name__}: {exc}") from exc
    if not callable(getattr(estimator, "predict", None)):
        raise InvalidArgument(f"{path} holds a {type(estimator).__name__}, which has no predict")
    return estimator


def _input_dtype(version_dir: Path) -> np.dtype:
    settings = section(version_dir, "sklearn")
    if "input_dtype" not in settings:
        return _FLOAT64
    dtype = parse_dtype(settings["input_dtype"], "streamserve.json sklearn.input_dtype")
    if dtype.kind not in "biuf":
        raise InvalidArgument(f"streamserve.json sklearn.input_dtype must be numeric, got {dtype}")
    return dtype


@dataclass(frozen=True)
class _Method:
    """One signature and the estimator method behind it."""

    signature: Signature
    call: Callable[[Any], Any]


def _methods(estimator: Any, path: Path, dtype: np.dtype) -> dict[str, _Method]:
    features = getattr(estimator, "n_features_in_", None)
    input_spec = TensorSpec(INPUT_NAME, dtype, (None, int(features) if features else None))
    adapt = _input_adapter(estimator)
    calls = {DEFAULT_SIGNATURE: (PREDICT_OUTPUT, estimator.predict)}
    if _has(estimator, "predict_proba"):
        calls[PROBA_SIGNATURE] = (PROBA_OUTPUT, estimator.predict_proba)
    methods = {}
    for name, (output, method) in calls.items():
        call = _adapted(method, adapt)
        spec = _probe_output(call, input_spec, output, estimator, path)
        signature = Signature(
            name, MappingProxyType({INPUT_NAME: input_spec}), MappingProxyType({output: spec})
        )
        methods[name] = _Method(signature, call)
    return methods


def _has(estimator: Any, method: str) -> bool:
    try:  # Pipeline and meta-estimators expose methods conditionally (available_if)
        return callable(getattr(estimator, method, None))
    except Exception:
        return False


def _input_adapter(estimator: Any) -> Callable[[np.ndarray], Any]:
    columns = getattr(estimator, "feature_names_in_", None)
    if columns is None or importlib.util.find_spec("pandas") is None:
        return lambda array: array
    import pandas as pd

    names = list(columns)
    return lambda array: pd.DataFrame(array, columns=names)


def _adapted(
    method: Callable[[Any], Any], adapt: Callable[[np.ndarray], Any]
) -> Callable[[Any], Any]:
    return lambda array: method(adapt(array))


def _probe_output(
    call: Callable[[Any], Any], input_spec: TensorSpec, output: str, estimator: Any, path: Path
) -> TensorSpec:
    """Output dtype and rank from one call on a row of zeros (fallback: from ``classes_``)."""
    assert input_spec.shape is not None
    features = input_spec.shape[1]
    if features is None:
        return TensorSpec(output, _label_dtype(estimator, output), None)
    try:
        sample = np.asarray(call(np.zeros((1, features), dtype=input_spec.dtype)))
    except Exception as exc:
        raise InvalidArgument(
            f"{path}: probing {output} on one row of zeros failed: {type(exc).__name__}: {exc}"
        ) from exc
    dtype = np.dtype(object) if sample.dtype.kind in "OUS" else sample.dtype
    return TensorSpec(output, dtype, (None, *sample.shape[1:]))


def _label_dtype(estimator: Any, output: str) -> np.dtype:
    classes = getattr(estimator, "classes_", None)
    if output == PROBA_OUTPUT or classes is None:
        return _FLOAT64
    dtype = np.asarray(classes).dtype
    return np.dtype(object) if dtype.kind in "OUS" else dtype


class SklearnServable(SignatureServable):
    """One loaded estimator. ``predict`` is thread-safe (scikit-learn inference is)."""

    platform = "sklearn"  # V2 model metadata

    def __init__(self, estimator: Any, methods: dict[str, _Method], path: Path) -> None:
        self._estimator = estimator
        self._methods = methods
        self._path = path
        self._signatures = MappingProxyType({n: m.signature for n, m in methods.items()})

    @property
    def estimator(self) -> Any:
        return self._estimator

    def predict(
        self,
        inputs: Mapping[str, np.ndarray],
        signature_name: str = DEFAULT_SIGNATURE,
        output_filter: Sequence[str] | None = None,
    ) -> Tensors:
        signature = self.checked_signature(signature_name, inputs)
        names = resolve_outputs(signature, output_filter, list(signature.outputs))
        [output] = signature.outputs.values()
        try:
            raw = self._methods[signature_name].call(inputs[INPUT_NAME])
        except StreamserveError:
            raise
        except ValueError as exc:  # scikit-learn's own input checks (NaN, inf, ...)
            message = f"{self._path}: {signature_name} rejected the input: {exc}"
            raise InvalidArgument(message) from exc
        return {name: conform_output(output, raw, str(self._path)) for name in names}

    def close(self) -> None:
        self._estimator = None
        self._methods = {}
