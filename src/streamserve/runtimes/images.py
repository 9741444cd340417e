"""Encoded image bytes → a normalised float32 batch, the torchvision way.

Per image: size limits checked on the header (before any pixel is decoded) → EXIF
transpose → colour convert → resize the short side (bilinear; the long side scaled and
truncated with ``int()``, as ``torchvision.transforms.Resize(int)``) → centre crop (offsets
rounded, as ``CenterCrop``) → ``(x - mean) / std`` → NCHW or NHWC.

Bad elements never fail silently: :class:`BadImages` (an ``InvalidArgument``) names every
bad element index with its reason, and carries them in ``bad_elements`` so a stream
processor can dead-letter just those records.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from streamserve.errors import InvalidArgument

_MAX_LISTED = 5
_CHANNELS = {"RGB": 3, "BGR": 3, "L": 1}


@dataclass(frozen=True)
class ImageSpec:
    """How one signature turns encoded images into the model's float input."""

    resize_short: int
    crop: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    layout: str = "NCHW"  # or NHWC
    color: str = "RGB"  # RGB, BGR or L
    max_pixels: int = 40_000_000
    max_bytes: int = 20_000_000

    @property
    def channels(self) -> int:
        return _CHANNELS[self.color]

    def batch_shape(self, count: int) -> tuple[int, int, int, int]:
        if self.layout == "NCHW":
            return (count, self.channels, self.crop, self.crop)
        return (count, self.crop, self.crop, self.channels)


class BadImages(InvalidArgument):
    """Some elements of an image batch could not be used; ``bad_elements[index] = reason``."""

    def __init__(self, input_name: str, bad_elements: dict[int, str]) -> None:
        listed = [f"element {i}: {bad_elements[i]}" for i in sorted(bad_elements)[:_MAX_LISTED]]
        more = len(bad_elements) - len(listed)
        suffix = f"; and {more} more" if more > 0 else ""
        super().__init__(f"input '{input_name}': " + "; ".join(listed) + suffix)
        self.input_name = input_name
        self.bad_elements = bad_elements


class _BadElement(Exception):
    """One element's reason; collected into :class:`BadImages`."""


def preprocess_batch(
    input_name: str, images: np.ndarray, spec: ImageSpec, executor: Executor | None = None
) -> np.ndarray:
    """Decode ``images`` (rank-1 object array of encoded bytes) into one float32 batch."""
    batch = np.empty(spec.batch_shape(len(images)), dtype=np.float32)
    mean = np.asarray(spec.mean, dtype=np.float32)
    std = np.asarray(spec.std, dtype=np.float32)

    def fill(index: int) -> str | None:
        try:
            pixels = decode_and_crop(images[index], spec)
        except _BadElement as error:
            return str(error)
        _normalise_into(batch, index, pixels, mean, std, spec.layout)
        return None

    indices: Iterable[int] = range(len(images))
    mapper: Callable[..., Iterable[str | None]] = map
    if executor is not None and len(images) > 1:
        mapper = executor.map
    reasons = list(mapper(fill, indices))
    bad = {index: reason for index, reason in enumerate(reasons) if reason is not None}
    if bad:
        raise BadImages(input_name, bad)
    return batch


def decode_and_crop(data: object, spec: ImageSpec) -> np.ndarray:
    """One encoded image → uint8 HWC array of ``crop × crop × channels``."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise _BadElement(f"expected encoded image bytes, got {type(data).__name__}")
    if len(data) > spec.max_bytes:
        raise _BadElement(f"image is {len(data)} bytes, more than max_bytes={spec.max_bytes}")
    try:
        with Image.open(io.BytesIO(data)) as encoded:  # reads the header only
            _check_pixels(encoded, spec)
            image = _oriented(encoded)
            image = _coloured(image, spec.color)
            image = _resized(image, spec.resize_short)
            return _centre_cropped(np.asarray(image), spec.crop, spec.color)
    except _BadElement:
        raise
    except Image.DecompressionBombError as error:
        raise _BadElement(f"too many pixels ({error})") from None
    except UnidentifiedImageError:
        raise _BadElement("not a decodable image (unknown or unsupported format)") from None
    except Exception as error:  # any decoder failure is the element's fault, never ours
        reason = str(error) or type(error).__name__
        raise _BadElement(f"not a decodable image ({reason})") from None


def _check_pixels(image: Image.Image, spec: ImageSpec) -> None:
    width, height = image.size
    if width * height > spec.max_pixels:
        raise _BadElement(
            f"image is {width}x{height} = {width * height} pixels, "
            f"more than max_pixels={spec.max_pixels}"
        )
    if width == 0 or height == 0:
        raise _BadElement(f"image is {width}x{height}, empty")


def _oriented(image: Image.Image) -> Image.Image:
    orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
    if orientation in (2, 3, 4, 5, 6, 7, 8):
        return ImageOps.exif_transpose(image)
    return image


def _coloured(image: Image.Image, color: str) -> Image.Image:
    mode = "L" if color == "L" else "RGB"
    return image if image.mode == mode else image.convert(mode)


def _resized(image: Image.Image, short_side: int) -> Image.Image:
    width, height = image.size
    if width <= height:
        size = (short_side, int(short_side * height / width))
    else:
        size = (int(short_side * width / height), short_side)
    if size == image.size:
        return image
    return image.resize(size, Image.Resampling.BILINEAR)


def _centre_cropped(pixels: np.ndarray, crop: int, color: str) -> np.ndarray:
    height, width = pixels.shape[:2]
    top = round((height - crop) / 2.0)
    left = round((width - crop) / 2.0)
    cropped = pixels[top : top + crop, left : left + crop]
    if color == "BGR":
        return cropped[..., ::-1]
    if color == "L":
        return cropped[..., np.newaxis]
    return cropped


def _normalise_into(
    batch: np.ndarray,
    index: int,
    pixels: np.ndarray,
    mean: np.ndarray,
    std: np.ndarray,
    layout: str,
) -> None:
    values = (pixels.astype(np.float32) - mean) / std
    batch[index] = values.transpose(2, 0, 1) if layout == "NCHW" else values
