"""The ``model.py`` runtime: contract, signatures from ``signature()``, checks both ways,
clear load errors, and the registry picking it."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest

from streamserve.errors import Internal, InvalidArgument
from streamserve.runtimes.python_model import PythonModelRuntime, PythonServable
from streamserve.runtimes.registry import load_servable

DOUBLER = """
import numpy as np

class Model:
    def load(self, version_dir):
        self.factor = float((version_dir / "factor.txt").read_text())

    def signature(self):
        return {"inputs": {"x": {"dtype": "float32", "shape": [-1, 2]}},
                "outputs": {"y": {"dtype": "float32", "shape": [-1, 2]},
                            "name": {"dtype": "string", "shape": [-1]}}}

    def predict(self, inputs):
        x = inputs["x"]
        return {"y": x * self.factor, "name": ["row"] * len(x)}
"""

TWO_SIGNATURES = """
class Model:
    thread_safe = True
    def load(self, version_dir): pass
    def signature(self):
        spec = {"inputs": {"x": {"dtype": "int64", "shape": [-1]}},
                "outputs": {"y": {"dtype": "int64", "shape": [-1]}}}
        return {"signatures": {"serving_default": spec, "negate": spec}}
    def predict(self, inputs, signature_name):
        x = inputs["x"]
        return {"y": -x if signature_name == "negate" else x + 1}
    def unload(self):
        open(self.marker, "w").close() if hasattr(self, "marker") else None
"""

SIGNATURE = """
class Model:
    def load(self, version_dir): pass
    def predict(self, inputs): pass
    def signature(self): return {}
"""


def write_model(version_dir: Path, source: str, **files: str) -> Path:
    version_dir.mkdir(parents=True, exist_ok=True)
    (version_dir / "model.py").write_text(textwrap.dedent(source))
    for name, text in files.items():
        (version_dir / name).write_text(text)
    return version_dir


def test_contract_signature_and_predict(tmp_path: Path) -> None:
    servable = load_servable(write_model(tmp_path / "1", DOUBLER, **{"factor.txt": "3"}))
    assert isinstance(servable, PythonServable)
    signature = servable.signatures["serving_default"]
    assert signature.inputs["x"].dtype == np.float32
    assert signature.inputs["x"].shape == (None, 2)
    assert signature.outputs["name"].dtype == np.dtype(object)
    out = servable.predict({"x": np.ones((2, 2), np.float32)})
    np.testing.assert_array_equal(out["y"], np.full((2, 2), 3, np.float32))
    assert out["name"].tolist() == [b"row", b"row"]
    assert list(servable.predict({"x": np.ones((1, 2), np.float32)}, output_filter=["y"])) == ["y"]


def test_requests_are_checked_against_the_signature(tmp_path: Path) -> None:
    servable = load_servable(write_model(tmp_path / "1", DOUBLER, **{"factor.txt": "1"}))
    with pytest.raises(InvalidArgument, match=r"input 'x': expected float32\[\?,2\], got float64"):
        servable.predict({"x": np.ones((1, 2))})


def test_several_signatures_pass_the_name(tmp_path: Path) -> None:
    servable = load_servable(write_model(tmp_path / "1", TWO_SIGNATURES))
    x = np.array([1, 2], np.int64)
    assert servable.predict({"x": x})["y"].tolist() == [2, 3]
    assert servable.predict({"x": x}, "negate")["y"].tolist() == [-1, -2]


def test_two_versions_are_separate_modules(tmp_path: Path) -> None:
    one = load_servable(write_model(tmp_path / "1", DOUBLER, **{"factor.txt": "2"}))
    two = load_servable(write_model(tmp_path / "2", DOUBLER.replace("x * self", "x + self"),
                                    **{"factor.txt": "2"}))  # fmt: skip
    x = np.full((1, 2), 5, np.float32)
    assert one.predict({"x": x})["y"].tolist() == [[10, 10]]
    assert two.predict({"x": x})["y"].tolist() == [[7, 7]]


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("x = 1\n", "defines no class 'Model'"),
        ("raise RuntimeError('boom')\n", "importing .* failed: RuntimeError: boom"),
        ("class Model:\n    def load(self, d): pass\n    def predict(self, i): pass\n",
         "class Model has no method 'signature'"),
        (DOUBLER, r"load failed: FileNotFoundError"),
        (SIGNATURE.format('{"inputs": {"x": {"dtype": "text"}}, "outputs": {}}'),
         "signature 'serving_default' inputs: 'x': unknown dtype 'text'"),
        (SIGNATURE.format('{"inputs": {"x": {"dtype": "int8", "shape": "x"}}}'),
         "tensor 'x': shape must be a list"),
        (SIGNATURE.format('{"inputs": {"x": {"dtype": "int8"}}}'),
         "signature 'serving_default' outputs must be a non-empty dict"),
        (SIGNATURE.format("[1]"), "signature\\(\\) must return a dict, got list"),
    ],
)  # fmt: skip
def test_load_errors_name_the_file_and_the_problem(
    tmp_path: Path, source: str, message: str
) -> None:
    with pytest.raises(InvalidArgument, match=message):
        PythonModelRuntime().load(write_model(tmp_path / "1", source))


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("return None", "predict returned NoneType, not a dict"),
        ("return {}", "predict returned no output 'y'"),
        ("return {'y': inputs['x'][0], 'name': []}", "output 'y' has shape"),
        ("raise ValueError('bad row')", "predict failed: ValueError: bad row"),
    ],
)
def test_bad_outputs_are_internal_errors_naming_the_model(
    tmp_path: Path, body: str, message: str
) -> None:
    source = DOUBLER.replace('return {"y": x * self.factor, "name": ["row"] * len(x)}', body, 1)
    servable = load_servable(write_model(tmp_path / "1", source, **{"factor.txt": "1"}))
    with pytest.raises(Internal, match=message):
        servable.predict({"x": np.ones((1, 2), np.float32)})


def test_model_py_wins_over_other_model_files(tmp_path: Path) -> None:
    from streamserve.models.toy import build_tiny

    version_dir = tmp_path / "1"
    build_tiny(version_dir, width=2)
    write_model(version_dir, DOUBLER, **{"factor.txt": "1"})
    assert isinstance(load_servable(version_dir), PythonServable)


def test_close_calls_unload_and_forgets_the_module(tmp_path: Path) -> None:
    import hashlib
    import sys

    source = TWO_SIGNATURES.replace(
        "def load(self, version_dir): pass",
        "def load(self, version_dir): self.marker = version_dir / 'gone'",
    )
    version_dir = write_model(tmp_path / "1", source)
    digest = hashlib.sha256(str((version_dir / "model.py").resolve()).encode()).hexdigest()
    module_name = f"streamserve_model_{digest[:16]}"
    servable = load_servable(version_dir)
    assert module_name in sys.modules
    servable.close()
    assert (version_dir / "gone").exists()
    assert module_name not in sys.modules
