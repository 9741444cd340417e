"""Builders for the custom-model tests: a scikit-learn pipeline saved as ``model.joblib``,
and the same kind of pipeline wrapped by hand in a ``model.py``.

Versions differ (a different seed and regularisation), so a test can tell which version
answered. ``expected_*`` compute the outputs by calling the saved objects directly, not
through streamserve.
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from streamserve.testing import ModelServerProcess

Server = TypeVar("Server", bound=ModelServerProcess)

FEATURES = 4
CLASSES = 3

MODEL_PY = textwrap.dedent(
    '''
    """A scikit-learn pipeline wrapped by hand: float32 features in, label + probabilities out."""
    import pathlib

    import joblib
    import numpy as np


    class Model:
        thread_safe = True  # scikit-learn inference is

        def load(self, version_dir: pathlib.Path) -> None:
            self.pipeline = joblib.load(version_dir / "pipeline.joblib")

        def signature(self) -> dict:
            return {
                "inputs": {"x": {"dtype": "float32", "shape": [-1, 4]}},
                "outputs": {
                    "label": {"dtype": "int64", "shape": [-1]},
                    "probabilities": {"dtype": "float32", "shape": [-1, 3]},
                },
            }

        def predict(self, inputs: dict) -> dict:
            x = inputs["x"].astype(np.float64)
            return {
                "label": self.pipeline.predict(x).astype(np.int64),
                "probabilities": self.pipeline.predict_proba(x).astype(np.float32),
            }
    '''
).lstrip()


def training_data(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 3, size=(CLASSES, FEATURES))
    labels = rng.integers(0, CLASSES, size=300)
    features = centers[labels] + rng.normal(0, 1.5, size=(300, FEATURES))
    return features, labels


def fit_pipeline(version: int) -> Any:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    features, labels = training_data(seed=version)
    pipeline = make_pipeline(StandardScaler(), LogisticRegression(C=0.1 * version, max_iter=500))
    return pipeline.fit(features, labels)


def build_sklearn_model(version_dir: Path, version: int, file_name: str = "model.joblib") -> Path:
    """``version_dir/model.joblib``: a fitted StandardScaler + LogisticRegression pipeline."""
    import joblib

    version_dir.mkdir(parents=True, exist_ok=True)
    joblib.dump(fit_pipeline(version), version_dir / file_name)
    return version_dir


def build_python_model(version_dir: Path, version: int) -> Path:
    """``version_dir/model.py`` wrapping ``pipeline.joblib`` by hand."""
    build_sklearn_model(version_dir, version, file_name="pipeline.joblib")
    (version_dir / "model.py").write_text(MODEL_PY)
    return version_dir


def build_both(root: Path, versions: tuple[int, ...] = (1, 2)) -> dict[str, Path]:
    """``root/pyiris/<v>`` (model.py) and ``root/skiris/<v>`` (model.joblib)."""
    for version in versions:
        build_python_model(root / "pyiris" / str(version), version)
        build_sklearn_model(root / "skiris" / str(version), version)
    return {"pyiris": root / "pyiris", "skiris": root / "skiris"}


def serve_both(
    serve: Callable[..., Server],
    folder: Path,
    config: str,
    split: Mapping[str, Mapping[str, int]] | None = None,
) -> Server:
    """``serve`` started with dynamic batching on the model config text ``config`` and, when
    given, the traffic ``split`` (file polling off), both written to ``folder``; returned once
    ``pyiris`` and ``skiris`` are ready."""
    config_file = folder / "models.config"
    config_file.write_text(config)
    flags = [f"--model_config_file={config_file}", "--enable_batching"]
    if split is not None:
        split_file = folder / "split.json"
        split_file.write_text(json.dumps(split))
        flags += [f"--traffic_split_file={split_file}", "--file_system_poll_wait_seconds=0"]
    process = serve(*flags)
    process.wait_ready(model="pyiris")
    return process.wait_ready(model="skiris")


def sample_rows(count: int, seed: int = 11) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(0, 3, size=(count, FEATURES)).round(3)


def expected_python(base: Path, version: int, x: np.ndarray) -> dict[str, np.ndarray]:
    """What ``model.py`` answers, by calling the wrapped pipeline directly."""
    import joblib

    pipeline = joblib.load(base / str(version) / "pipeline.joblib")
    x64 = x.astype(np.float32).astype(np.float64)
    return {
        "label": pipeline.predict(x64).astype(np.int64),
        "probabilities": pipeline.predict_proba(x64).astype(np.float32),
    }


def expected_sklearn(base: Path, version: int, x: np.ndarray) -> dict[str, np.ndarray]:
    """What the scikit-learn runtime answers (both signatures), by calling the estimator."""
    import joblib

    estimator = joblib.load(base / str(version) / "model.joblib")
    x64 = x.astype(np.float64)
    return {"predictions": estimator.predict(x64), "probabilities": estimator.predict_proba(x64)}
