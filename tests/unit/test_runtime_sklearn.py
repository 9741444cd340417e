"""The scikit-learn runtime: models as saved (joblib, pickle), signatures from the
estimator, outputs equal to calling it, and clear errors."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest

from streamserve.errors import InvalidArgument
from streamserve.runtimes.registry import load_servable
from streamserve.runtimes.scikit_learn import SklearnServable
from tests.custom_models import build_sklearn_model, fit_pipeline, sample_rows, training_data

pytest.importorskip("sklearn")


def test_classifier_pipeline_has_predict_and_predict_proba(tmp_path: Path) -> None:
    servable = load_servable(build_sklearn_model(tmp_path / "1", version=1))
    assert isinstance(servable, SklearnServable)
    assert set(servable.signatures) == {"serving_default", "predict_proba"}
    default = servable.signatures["serving_default"]
    assert default.inputs["inputs"].shape == (None, 4)  # n_features_in_
    assert default.inputs["inputs"].dtype == np.float64
    assert default.outputs["predictions"].dtype == np.int64
    assert default.outputs["predictions"].shape == (None,)
    assert servable.signatures["predict_proba"].outputs["probabilities"].shape == (None, 3)

    x = sample_rows(6)
    pipeline = fit_pipeline(1)
    got = servable.predict({"inputs": x})["predictions"]
    np.testing.assert_array_equal(got, pipeline.predict(x))
    proba = servable.predict({"inputs": x}, "predict_proba")["probabilities"]
    np.testing.assert_allclose(proba, pipeline.predict_proba(x))


def test_pickle_file_and_regressor_without_predict_proba(tmp_path: Path) -> None:
    from sklearn.linear_model import Ridge

    features, labels = training_data(3)
    regressor = Ridge().fit(features, labels.astype(float))
    (tmp_path / "1").mkdir()
    (tmp_path / "1" / "model.pkl").write_bytes(pickle.dumps(regressor))
    servable = load_servable(tmp_path / "1")
    assert set(servable.signatures) == {"serving_default"}
    x = sample_rows(3)
    np.testing.assert_allclose(servable.predict({"inputs": x})["predictions"], regressor.predict(x))


def test_string_class_labels_become_bytes(tmp_path: Path) -> None:
    import joblib
    from sklearn.tree import DecisionTreeClassifier

    features, labels = training_data(4)
    names = np.array(["setosa", "versicolor", "virginica"])[labels]
    (tmp_path / "1").mkdir()
    joblib.dump(DecisionTreeClassifier(random_state=0).fit(features, names),
                tmp_path / "1" / "model.joblib")  # fmt: skip
    servable = load_servable(tmp_path / "1")
    assert servable.signatures["serving_default"].outputs["predictions"].dtype == np.dtype(object)
    got = servable.predict({"inputs": features[:3]})["predictions"]
    assert got.tolist() == [name.encode() for name in names[:3]]


def test_input_dtype_from_streamserve_json(tmp_path: Path) -> None:
    version_dir = build_sklearn_model(tmp_path / "m" / "1", version=1)
    (tmp_path / "m" / "streamserve.json").write_text(
        json.dumps({"sklearn": {"input_dtype": "float32"}})
    )
    servable = load_servable(version_dir)
    assert servable.signatures["serving_default"].inputs["inputs"].dtype == np.float32
    x = sample_rows(2).astype(np.float32)
    np.testing.assert_array_equal(
        servable.predict({"inputs": x})["predictions"], fit_pipeline(1).predict(x)
    )


def test_wrong_feature_count_names_the_expected_shape(tmp_path: Path) -> None:
    servable = load_servable(build_sklearn_model(tmp_path / "1", version=1))
    with pytest.raises(InvalidArgument, match=r"input 'inputs': expected float64\[\?,4\]"):
        servable.predict({"inputs": np.ones((1, 3))})


def test_nan_input_is_invalid_argument(tmp_path: Path) -> None:
    servable = load_servable(build_sklearn_model(tmp_path / "1", version=1))
    with pytest.raises(InvalidArgument, match="serving_default rejected the input"):
        servable.predict({"inputs": np.full((1, 4), np.nan)})


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"not a pickle", "cannot load .*model.joblib"),
        (pickle.dumps({"a": 1}), "holds a dict, which has no predict"),
    ],
)
def test_unloadable_files_fail_clearly(tmp_path: Path, content: bytes, message: str) -> None:
    (tmp_path / "1").mkdir()
    (tmp_path / "1" / "model.joblib").write_bytes(content)
    with pytest.raises(InvalidArgument, match=message):
        load_servable(tmp_path / "1")
