"""Assemble a :class:`StreamProcessor` from a declarative :class:`PipelineSpec`.

The one place that turns "which model, which records, which Kafka settings" into
predictors, a codec and a processor: ``streamserve stream`` and the stream benchmark's
worker both call :func:`assemble`. Everything it opens (predictors, the image fetcher) is
closed by the ``AsyncExitStack`` it is given.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streamserve.errors import InvalidArgument
from streamserve.predictors.base import Predictor
from streamserve.predictors.factory import (
    PredictorSpec,
    create_embedded_predictor,
    create_members,
)
from streamserve.stream.codecs import ImageCodec, RecordCodec, TensorJsonCodec
from streamserve.stream.fetch import FetchPolicy, ImageFetcher
from streamserve.stream.processor import ProcessorConfig, ReadyCallback, StreamProcessor

DEFAULT_MAX_PIXELS = 40_000_000

PredictorWrapper = Callable[[Predictor], Predictor]


@dataclass(frozen=True)
class CodecSpec:
    """How records become tensors: ``kind`` is ``"tensor"`` (JSON tensors) or ``"image"``."""

    kind: str = "tensor"
    input_dtypes: Mapping[str, str] = field(default_factory=dict)
    signature_name: str | None = None
    output_format: str = "json"
    fetch: FetchPolicy = field(default_factory=FetchPolicy)
    max_pixels: int = DEFAULT_MAX_PIXELS


@dataclass(frozen=True)
class PipelineSpec:
    """A processor, its model and its codec.

    ``model.targets`` set: remote (one predictor per target, each behind its own breaker),
    with an optional embedded fallback. ``model.model_base_path`` set: embedded.
    """

    processor: ProcessorConfig
    model: PredictorSpec
    codec: CodecSpec = field(default_factory=CodecSpec)
    fallback_base_path: str | Path | None = None
    fallback_model_name: str | None = None


YOUNG_COLLECTION_EVERY = 20_000  # container allocations between young collections


def settle_heap() -> None:
    """For a process that runs one assembled stream processor, before it runs: what is
    alive now (modules, the model, the clients) lives as long as the process, so the
    collector stops scanning it (``gc.freeze``), and young collections run every
    :data:`YOUNG_COLLECTION_EVERY` allocations instead of 700 (each record allocates a
    dozen short-lived containers; the default made full collections of the whole heap
    part of every few thousand records' cost)."""
    gc.collect()
    gc.freeze()
    young, middle, old = gc.get_threshold()
    gc.set_threshold(max(young, YOUNG_COLLECTION_EVERY), middle, old)


def _unwrapped(predictor: Predictor) -> Predictor:
    return predictor


async def assemble(
    spec: PipelineSpec,
    stack: contextlib.AsyncExitStack,
    *,
    wrap: PredictorWrapper = _unwrapped,
    on_ready: ReadyCallback | None = None,
) -> StreamProcessor:
    """The processor for ``spec``; ``wrap`` is applied to every predictor (e.g. to time
    its calls). Predictors and fetcher are closed when ``stack`` closes."""
    dtypes: dict[str, Any] = {}
    if spec.model.targets:
        predictors = await _remote(spec, stack, wrap)
        fallback = await _fallback(spec, stack, wrap)
    else:
        embedded = await _embedded_model(spec, stack)
        dtypes = _signature_dtypes(embedded, spec.codec.signature_name)
        predictors, fallback = [wrap(embedded)], None
    codec = _codec(spec.codec, dtypes, stack)
    return StreamProcessor(spec.processor, predictors, codec, fallback, on_ready=on_ready)


async def _remote(
    spec: PipelineSpec, stack: contextlib.AsyncExitStack, wrap: PredictorWrapper
) -> list[Predictor]:
    members = [wrap(member) for member in create_members(spec.model)]
    for member in members:
        stack.push_async_callback(member.close)
    return members


async def _fallback(
    spec: PipelineSpec, stack: contextlib.AsyncExitStack, wrap: PredictorWrapper
) -> Predictor | None:
    if spec.fallback_base_path is None:
        return None
    name = spec.fallback_model_name or spec.model.model_name
    return wrap(await _open_embedded(spec.fallback_base_path, name, None, "fallback", stack))


async def _embedded_model(spec: PipelineSpec, stack: contextlib.AsyncExitStack) -> Any:
    model = spec.model
    if model.model_base_path is None:
        raise InvalidArgument("give model server targets or a model base path")
    if spec.fallback_base_path is not None:
        raise InvalidArgument("a fallback model only applies to a remote model (--model-server)")
    if model.model_label is not None:
        raise InvalidArgument("a model label needs a remote model (--model-server)")
    return await _open_embedded(
        model.model_base_path, model.model_name, model.model_version, "embedded", stack
    )


async def _open_embedded(
    base_path: str | Path,
    name: str | None,
    version: int | None,
    mode: str,
    stack: contextlib.AsyncExitStack,
) -> Any:
    predictor = await asyncio.to_thread(
        create_embedded_predictor, base_path, name or "", version, mode=mode
    )
    stack.push_async_callback(predictor.close)
    return predictor


def _signature_dtypes(embedded: Any, signature_name: str | None) -> dict[str, Any]:
    """Input dtypes of the embedded model's signature ({} when not known yet)."""
    try:
        with embedded.manager.handle(embedded.model_name) as handle:
            signature = handle.servable.signatures[signature_name or "serving_default"]
            return {input_name: spec.dtype for input_name, spec in signature.inputs.items()}
    except Exception:  # no version loaded yet / unknown signature: infer from JSON
        return {}


def _codec(
    spec: CodecSpec, model_dtypes: dict[str, Any], stack: contextlib.AsyncExitStack
) -> RecordCodec:
    if spec.kind == "tensor":
        return TensorJsonCodec({**model_dtypes, **spec.input_dtypes}, spec.signature_name)
    if spec.kind != "image":
        raise InvalidArgument(f"unknown codec {spec.kind!r}; use tensor or image")
    fetcher = ImageFetcher(spec.fetch)
    stack.push_async_callback(fetcher.close)
    return ImageCodec(
        fetcher,
        output_format=spec.output_format,
        signature_name=spec.signature_name,
        max_pixels=spec.max_pixels,
    )
