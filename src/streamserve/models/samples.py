"""Sample photos that ship inside installed packages (no internet needed).

scikit-learn bundles two JPEG photos; scikit-image bundles a few more colour
pictures. Each sample has a file name and the ImageNet labels a good classifier
is expected to put near the top, for demos and tests.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Sample:
    name: str
    path: Path


def _sklearn_images() -> list[Sample]:
    import sklearn.datasets

    folder = Path(sklearn.datasets.__file__).parent / "images"
    return [Sample(name, folder / name) for name in ("china.jpg", "flower.jpg")]


def _skimage_images() -> list[Sample]:
    try:
        import skimage
    except ImportError:
        return []
    folder = Path(skimage.__file__).parent / "data"
    names = ("chelsea.png", "coffee.png", "astronaut.png", "rocket.jpg", "motorcycle_left.png")
    return [Sample(name, folder / name) for name in names if (folder / name).exists()]


def sample_images() -> list[Sample]:
    """scikit-learn's photos first, then whatever scikit-image ships."""
    return _sklearn_images() + _skimage_images()


def copy_samples(target: Path) -> list[Path]:
    target.mkdir(parents=True, exist_ok=True)
    copied = []
    for sample in sample_images():
        destination = target / sample.name
        shutil.copyfile(sample.path, destination)
        copied.append(destination)
    return copied
