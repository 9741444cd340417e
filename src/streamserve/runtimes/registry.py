"""Pick the runtime for a version directory and load it (plus optional processing).

In this order (the first file found decides):

1. ``model.py`` → a custom Python model (:mod:`.python_model`); it comes first because
   it may wrap any other file in the directory;
2. ``model.onnx`` → ONNX Runtime;
3. ``saved_model.pb`` → TensorFlow (the optional ``streamserve[tensorflow]`` extra);
4. ``model.joblib`` / ``model.pkl`` → scikit-learn (the optional ``streamserve[sklearn]``
   extra).

``processing.json`` beside the model wraps the result.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from streamserve.errors import FailedPrecondition, NotFound
from streamserve.runtimes.base import LoadOptions, Runtime, Servable
from streamserve.runtimes.onnx import MODEL_FILE as ONNX_FILE
from streamserve.runtimes.onnx import OnnxRuntime
from streamserve.runtimes.processing import wrap_with_processing
from streamserve.runtimes.python_model import MODEL_FILE as PYTHON_FILE
from streamserve.runtimes.python_model import PythonModelRuntime
from streamserve.runtimes.scikit_learn import MODEL_FILES as SKLEARN_FILES
from streamserve.runtimes.scikit_learn import SklearnRuntime

SAVED_MODEL_FILE = "saved_model.pb"
MODEL_FILES = (PYTHON_FILE, ONNX_FILE, SAVED_MODEL_FILE, *SKLEARN_FILES)


def tensorflow_installed() -> bool:
    """Cheap check (no import: importing tensorflow takes seconds)."""
    return importlib.util.find_spec("tensorflow") is not None


def available_runtimes(options: LoadOptions | None = None) -> list[Runtime]:
    """Runtimes whose dependencies are installed, in the order ``load_servable`` tries them."""
    runtimes: list[Runtime] = [PythonModelRuntime(), OnnxRuntime(options)]
    if tensorflow_installed():
        from streamserve.runtimes.tensorflow import TensorFlowRuntime

        runtimes.append(TensorFlowRuntime(options))
    if importlib.util.find_spec("sklearn") is not None:
        runtimes.append(SklearnRuntime())
    return runtimes


def load_servable(version_dir: Path, options: LoadOptions | None = None) -> Servable:
    """Load ``version_dir`` with the runtime its model file calls for.

    Raises ``NotFound`` when the directory holds no known model file, ``FailedPrecondition``
    when the model needs a runtime that is not installed, and the runtime's own
    ``StreamserveError`` when the model cannot be loaded.
    """
    version_dir = Path(version_dir)
    if not version_dir.is_dir():
        raise NotFound(f"model version directory {version_dir} does not exist")
    return wrap_with_processing(_runtime_for(version_dir, options).load(version_dir), version_dir)


def _runtime_for(version_dir: Path, options: LoadOptions | None) -> Runtime:
    if (version_dir / PYTHON_FILE).is_file():
        return PythonModelRuntime()
    if (version_dir / ONNX_FILE).is_file():
        return OnnxRuntime(options)
    if (version_dir / SAVED_MODEL_FILE).is_file():
        if not tensorflow_installed():
            raise FailedPrecondition(
                f"{version_dir} holds a TensorFlow SavedModel, but tensorflow is not installed; "
                "install streamserve[tensorflow]"
            )
        from streamserve.runtimes.tensorflow import TensorFlowRuntime

        return TensorFlowRuntime(options)
    if any((version_dir / name).is_file() for name in SKLEARN_FILES):
        return SklearnRuntime()  # says which extra is missing, if one is
    raise NotFound(f"no model file in {version_dir}: looked for {' or '.join(MODEL_FILES)}")
