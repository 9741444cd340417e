"""Optional pre/post-processing around a servable, declared by ``processing.json``.

The format is fixed in the project contracts (``notes/contracts.md``)::

    {"signatures": {"serving_default": {"image_input": {...}, "topk_output": {...}},
                    "predict_images": {"same_as": "serving_default"}},
     "raw_signature_name": "tensor"}

Each processed signature runs the inner servable's default signature: ``image_input``
replaces the model's float input with a batch of encoded images (``images.py``),
``topk_output`` replaces the model's logits with ``classes`` (label bytes) and ``scores``.
Other model inputs/outputs pass through unchanged. The plain model signature stays
reachable under ``raw_signature_name``.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np

from streamserve.errors import FailedPrecondition, Internal, InvalidArgument
from streamserve.runtimes.base import (
    DEFAULT_SIGNATURE,
    PREDICT_METHOD,
    Servable,
    Signature,
    Tensors,
    TensorSpec,
)
from streamserve.runtimes.images import ImageSpec, preprocess_batch
from streamserve.runtimes.validation import (
    SignatureServable,
    resolve_outputs,
)

PROCESSING_FILE = "processing.json"
_OBJECT = np.dtype(object)
_FLOAT32 = np.dtype(np.float32)


@dataclass(frozen=True)
class ImageInput:
    name: str
    model_input: str
    image: ImageSpec


@dataclass(frozen=True)
class TopKOutput:
    model_output: str
    k: int
    softmax: bool
    labels: np.ndarray  # object array of bytes; line i = class i
    classes_name: str = "classes"
    scores_name: str = "scores"


@dataclass(frozen=True)
class Step:
    """One processed signature: what to replace on either side of the model."""

    image_input: ImageInput | None
    topk_output: TopKOutput | None


@dataclass(frozen=True)
class ProcessingConfig:
    steps: Mapping[str, Step]
    raw_signature_name: str | None


# --------------------------------------------------------------------------- config


class _ConfigError(InvalidArgument):
    pass


def load_processing_config(path: Path) -> ProcessingConfig:
    """Parse ``processing.json``; every problem is an ``InvalidArgument`` naming the file."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        return _parse_config(document, path.parent)
    except _ConfigError as error:
        raise InvalidArgument(f"{path}: {error.message}") from None
    except (OSError, ValueError) as error:
        raise InvalidArgument(f"{path}: cannot read processing config ({error})") from None


def _parse_config(document: Any, base_dir: Path) -> ProcessingConfig:
    _expect(isinstance(document, dict), "the top level must be a JSON object")
    raw_signatures = document.get("signatures")
    _expect(
        isinstance(raw_signatures, dict) and bool(raw_signatures),
        "'signatures' must be a non-empty object",
    )
    steps: dict[str, Step] = {}
    for name, body in raw_signatures.items():
        _expect(isinstance(body, dict), f"signature '{name}' must be an object")
        if "same_as" not in body:
            steps[name] = _parse_step(name, body, base_dir)
    for name, body in raw_signatures.items():
        if "same_as" in body:
            target = body["same_as"]
            _expect(
                target in steps,
                f"signature '{name}': same_as '{target}' is not a defined signature",
            )
            steps[name] = steps[target]
    raw_name = document.get("raw_signature_name")
    _expect(
        raw_name is None or (isinstance(raw_name, str) and bool(raw_name)),
        "'raw_signature_name' must be a string",
    )
    _expect(
        raw_name not in steps, f"raw_signature_name '{raw_name}' clashes with a processed signature"
    )
    return ProcessingConfig(steps=MappingProxyType(steps), raw_signature_name=raw_name)


def _parse_step(name: str, body: dict[str, Any], base_dir: Path) -> Step:
    unknown = set(body) - {"image_input", "topk_output"}
    _expect(not unknown, f"signature '{name}': unknown keys {sorted(unknown)}")
    image = body.get("image_input")
    topk = body.get("topk_output")
    _expect(image is not None or topk is not None, f"signature '{name}' declares no processing")
    return Step(
        image_input=None if image is None else _parse_image_input(name, image),
        topk_output=None if topk is None else _parse_topk(name, topk, base_dir),
    )


def _parse_image_input(signature: str, raw: Any) -> ImageInput:
    where = f"signature '{signature}' image_input"
    _expect(isinstance(raw, dict), f"{where} must be an object")
    color = raw.get("color", "RGB")
    layout = raw.get("layout", "NCHW")
    _expect(color in ("RGB", "BGR", "L"), f"{where}: color must be RGB, BGR or L, got {color!r}")
    _expect(layout in ("NCHW", "NHWC"), f"{where}: layout must be NCHW or NHWC, got {layout!r}")
    channels = 1 if color == "L" else 3
    spec = ImageSpec(
        resize_short=_positive_int(raw, "resize_short", where),
        crop=_positive_int(raw, "crop", where),
        mean=_floats(raw, "mean", channels, where, default=0.0),
        std=_floats(raw, "std", channels, where, default=1.0),
        layout=layout,
        color=color,
        max_pixels=_positive_int(raw, "max_pixels", where, ImageSpec.max_pixels),
        max_bytes=_positive_int(raw, "max_bytes", where, ImageSpec.max_bytes),
    )
    _expect(spec.crop <= spec.resize_short, f"{where}: crop must not exceed resize_short")
    _expect(all(s != 0 for s in spec.std), f"{where}: std must not contain 0")
    return ImageInput(
        name=_string(raw, "name", where, "images"),
        model_input=_string(raw, "model_input", where),
        image=spec,
    )


def _parse_topk(signature: str, raw: Any, base_dir: Path) -> TopKOutput:
    where = f"signature '{signature}' topk_output"
    _expect(isinstance(raw, dict), f"{where} must be an object")
    labels_file = _inside(base_dir, _string(raw, "labels_file", where), f"{where}: labels_file")
    try:
        lines = labels_file.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise _ConfigError(f"{where}: cannot read labels file {labels_file} ({error})") from None
    labels = np.array([line.encode("utf-8") for line in lines] or [b""], dtype=object)
    _expect(bool(lines), f"{where}: labels file {labels_file} is empty")
    k = _positive_int(raw, "k", where, 5)
    _expect(k <= len(lines), f"{where}: k={k} exceeds the {len(lines)} labels in {labels_file}")
    softmax = raw.get("softmax", True)
    _expect(isinstance(softmax, bool), f"{where}: softmax must be true or false")
    topk = TopKOutput(
        model_output=_string(raw, "model_output", where),
        k=k,
        softmax=softmax,
        labels=labels,
        classes_name=_string(raw, "classes_name", where, "classes"),
        scores_name=_string(raw, "scores_name", where, "scores"),
    )
    _expect(topk.classes_name != topk.scores_name, f"{where}: classes_name equals scores_name")
    return topk


def _inside(base_dir: Path, name: str, what: str) -> Path:
    """``base_dir / name`` if it resolves (symlinks and ``..`` included) inside
    ``base_dir``, the model's version directory; a model must not read other files."""
    root = Path(os.path.realpath(base_dir))
    path = Path(os.path.realpath(base_dir / name))
    _expect(
        path.is_relative_to(root),
        f"{what} {name!r} must be inside the model's version directory {base_dir}",
    )
    return path


def _expect(condition: bool, message: str) -> None:
    if not condition:
        raise _ConfigError(message)


def _string(raw: dict[str, Any], key: str, where: str, default: str | None = None) -> str:
    value = raw.get(key, default)
    _expect(isinstance(value, str) and bool(value), f"{where}: '{key}' must be a non-empty string")
    return str(value)


def _positive_int(raw: dict[str, Any], key: str, where: str, default: int | None = None) -> int:
    value = raw.get(key, default)
    valid = isinstance(value, int) and not isinstance(value, bool) and value > 0
    _expect(valid, f"{where}: '{key}' must be a positive integer")
    return int(value)  # type: ignore[arg-type]


def _floats(
    raw: dict[str, Any], key: str, count: int, where: str, default: float
) -> tuple[float, ...]:
    value = raw.get(key, [default] * count)
    valid = isinstance(value, list) and len(value) == count
    valid = valid and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
    _expect(valid, f"{where}: '{key}' must be a list of {count} numbers")
    return tuple(float(v) for v in value)


# --------------------------------------------------------------------------- servable


@dataclass(frozen=True)
class _Bound:
    """A :class:`Step` checked against the model, with its public signature."""

    step: Step
    signature: Signature
    passthrough_outputs: frozenset[str]
    default_outputs: list[str]


class ProcessedServable(SignatureServable):
    """Wraps a servable with the processing steps of ``processing.json``. Thread-safe."""

    def __init__(
        self, inner: Servable, config: ProcessingConfig, source: Path | None = None
    ) -> None:
        self._inner = inner
        self._inner_signature = _model_signature(inner)
        where = str(source or PROCESSING_FILE)
        self._bound = {
            name: _bind(name, step, self._inner_signature, where)
            for name, step in config.steps.items()
        }
        signatures = {name: bound.signature for name, bound in self._bound.items()}
        self._raw_name = config.raw_signature_name
        if self._raw_name:
            signatures[self._raw_name] = _renamed(self._inner_signature, self._raw_name)
        self._signatures = MappingProxyType(signatures)
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()
        self._closed = False

    @property
    def inner(self) -> Servable:
        return self._inner

    def predict(
        self,
        inputs: Mapping[str, np.ndarray],
        signature_name: str = DEFAULT_SIGNATURE,
        output_filter: Sequence[str] | None = None,
    ) -> Tensors:
        signature = self.checked_signature(signature_name, inputs)
        bound = self._bound.get(signature_name)
        if bound is None:  # the raw model signature
            resolve_outputs(signature, output_filter, [])
            return self._inner.predict(inputs, self._inner_signature.name, output_filter)
        wanted = resolve_outputs(signature, output_filter, bound.default_outputs)
        model_outputs = self._inner.predict(
            self._model_feeds(bound.step, inputs),
            self._inner_signature.name,
            self._model_output_names(bound, wanted),
        )
        return self._outputs(bound, wanted, model_outputs)

    def _model_feeds(self, step: Step, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        feeds = dict(inputs)
        image = step.image_input
        if image is not None:
            encoded = feeds.pop(image.name)
            feeds[image.model_input] = preprocess_batch(
                image.name, encoded, image.image, self._executor()
            )
        return feeds

    @staticmethod
    def _model_output_names(bound: _Bound, wanted: list[str]) -> list[str]:
        names = [name for name in wanted if name in bound.passthrough_outputs]
        topk = bound.step.topk_output
        if topk is not None and {topk.classes_name, topk.scores_name}.intersection(wanted):
            names.append(topk.model_output)
        return names

    @staticmethod
    def _outputs(bound: _Bound, wanted: list[str], model_outputs: Tensors) -> Tensors:
        topk = bound.step.topk_output
        extra: Tensors = {}
        if topk is not None and topk.model_output in model_outputs:
            classes, scores = top_k(model_outputs[topk.model_output], topk)
            extra = {topk.classes_name: classes, topk.scores_name: scores}
        return {name: extra[name] if name in extra else model_outputs[name] for name in wanted}

    def _executor(self) -> ThreadPoolExecutor:
        with self._pool_lock:
            if self._closed:
                raise FailedPrecondition("the servable was closed (model version unloaded)")
            if self._pool is None:
                workers = min(4, os.cpu_count() or 1)
                self._pool = ThreadPoolExecutor(workers, thread_name_prefix="streamserve-images")
            return self._pool

    def close(self) -> None:
        with self._pool_lock:
            self._closed = True
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)
        self._inner.close()


def top_k(logits: np.ndarray, topk: TopKOutput) -> tuple[np.ndarray, np.ndarray]:
    """``[N, C]`` logits → (``classes`` bytes ``[N, k]``, ``scores`` float32 ``[N, k]``).

    Ties keep the lower class index first (stable sort), so results are deterministic.
    """
    if len(logits) == 0:
        return np.empty((0, topk.k), dtype=object), np.empty((0, topk.k), dtype=np.float32)
    scores = np.asarray(logits, dtype=np.float32).reshape(len(logits), -1)
    if scores.shape[1] != len(topk.labels):
        raise Internal(
            f"model output '{topk.model_output}' has {scores.shape[1]} classes "
            f"but the labels file has {len(topk.labels)} lines"
        )
    if topk.softmax:
        shifted = np.exp(scores - scores.max(axis=1, keepdims=True))
        scores = shifted / shifted.sum(axis=1, keepdims=True)
    order = np.argsort(-scores, axis=1, kind="stable")[:, : topk.k]
    return topk.labels[order], np.take_along_axis(scores, order, axis=1).astype(np.float32)


def _model_signature(inner: Servable) -> Signature:
    signatures = inner.signatures
    if DEFAULT_SIGNATURE in signatures:
        return signatures[DEFAULT_SIGNATURE]
    if len(signatures) == 1:
        return next(iter(signatures.values()))
    raise InvalidArgument(
        f"processing needs the model's '{DEFAULT_SIGNATURE}' signature; it has {sorted(signatures)}"
    )


def _renamed(signature: Signature, name: str) -> Signature:
    return Signature(name, signature.inputs, signature.outputs, signature.method_name)


def _bind(name: str, step: Step, model: Signature, where: str) -> _Bound:
    """Check ``step`` against the model signature and derive the public signature."""
    inputs = dict(model.inputs)
    outputs = dict(model.outputs)
    image, topk = step.image_input, step.topk_output
    if image is not None:
        _check_image_input(name, image, model, where)
        del inputs[image.model_input]
        _require(image.name not in inputs, where, f"'{name}': input name '{image.name}' is taken")
        inputs[image.name] = TensorSpec(image.name, _OBJECT, (None,))
    passthrough = frozenset(outputs) - ({topk.model_output} if topk else set())
    if topk is not None:
        _check_topk_output(name, topk, model, where)
        del outputs[topk.model_output]
        for out_name, dtype in ((topk.classes_name, _OBJECT), (topk.scores_name, _FLOAT32)):
            _require(out_name not in outputs, where, f"'{name}': output name '{out_name}' is taken")
            outputs[out_name] = TensorSpec(out_name, dtype, (None, topk.k))
    signature = Signature(name, MappingProxyType(inputs), MappingProxyType(outputs), PREDICT_METHOD)
    return _Bound(step, signature, passthrough, list(outputs))


def _check_image_input(name: str, image: ImageInput, model: Signature, where: str) -> None:
    spec = model.inputs.get(image.model_input)
    _require(spec is not None, where, f"'{name}': model has no input '{image.model_input}'")
    assert spec is not None
    _require(spec.dtype == _FLOAT32, where, f"'{name}': model input '{spec.name}' is not float32")
    expected = image.image.batch_shape(0)[1:]
    fits = spec.shape is None or (
        len(spec.shape) == 4
        and all(
            want is None or want == got for want, got in zip(spec.shape[1:], expected, strict=True)
        )
    )
    _require(
        fits,
        where,
        f"'{name}': model input '{spec.name}' shape {spec.shape} does not take "
        f"{image.image.layout} images of {expected}",
    )


def _check_topk_output(name: str, topk: TopKOutput, model: Signature, where: str) -> None:
    spec = model.outputs.get(topk.model_output)
    _require(spec is not None, where, f"'{name}': model has no output '{topk.model_output}'")
    assert spec is not None
    _require(
        spec.dtype.kind == "f", where, f"'{name}': model output '{spec.name}' is not floating point"
    )
    classes = spec.shape[-1] if spec.shape else None
    _require(
        classes is None or classes == len(topk.labels),
        where,
        f"'{name}': model output '{spec.name}' has {classes} classes, "
        f"labels file has {len(topk.labels)}",
    )


def _require(condition: bool, where: str, message: str) -> None:
    if not condition:
        raise InvalidArgument(f"{where}: {message}")


def wrap_with_processing(inner: Servable, version_dir: Path) -> Servable:
    """``inner`` wrapped per ``version_dir/processing.json``, or ``inner`` itself if absent."""
    path = version_dir / PROCESSING_FILE
    if not path.is_file():
        return inner
    try:
        return ProcessedServable(inner, load_processing_config(path), path)
    except Exception:
        inner.close()
        raise
