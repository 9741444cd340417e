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
import importlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streamserve.errors import InvalidArgument, StreamserveError
from streamserve.predictors.base import Predictor
from streamserve.predictors.factory import (
    PredictorSpec,
    create_embedded_predictor,
    create_members,
)
from streamserve.runtimes.base import DEFAULT_SIGNATURE, Signature
from streamserve.stream.codecs import ImageCodec, RecordCodec, TensorJsonCodec
from streamserve.stream.codecs.events import EventCodec
from streamserve.stream.codecs.features import Feature, FeatureMapping
from streamserve.stream.codecs.formats import FormatOptions, OutputLayout, RecordFormat
from streamserve.stream.codecs.predictions import (
    PredictionFields,
    default_sources,
    parse_source,
)
from streamserve.stream.codecs.registry import Registry, RegistrySettings, SubjectStrategy
from streamserve.stream.fetch import FetchPolicy, ImageFetcher
from streamserve.stream.processor import ProcessorConfig, ReadyCallback, StreamProcessor

DEFAULT_MAX_PIXELS = 40_000_000
EVENT_FORMATS = ("json", "avro", "protobuf", "json-schema")
"""Input formats of structured records (the event codec); ``tensor`` and ``image`` are not."""
FORMAT_MODULES = {
    "json": "streamserve.stream.codecs.json_events",
    "avro": "streamserve.stream.codecs.avro",
    "protobuf": "streamserve.stream.codecs.protobuf",
    "json-schema": "streamserve.stream.codecs.json_schema",
}
"""Each format's module (its ``create(options)``), imported on use: the registry formats
bring confluent-kafka's serdes, which the other formats do not need."""
REMOTE_SIGNATURE_TIMEOUT_S = 10.0

log = logging.getLogger("streamserve.stream")

PredictorWrapper = Callable[[Predictor], Predictor]


@dataclass(frozen=True)
class CodecSpec:
    """How records become tensors and outputs become records.

    ``kind`` is the input format: ``"tensor"`` (JSON tensors), ``"image"``, or one of
    :data:`EVENT_FORMATS` (structured records: ``features`` map their fields to the model's
    inputs, ``output_fields`` (NAME → SOURCE, see :mod:`~streamserve.stream.codecs.predictions`)
    name the prediction fields). ``output_format``: ``prediction`` (``json``), ``enriched``
    (structured records only) or ``classic`` (images only)."""

    kind: str = "tensor"
    input_dtypes: Mapping[str, str] = field(default_factory=dict)
    signature_name: str | None = None
    output_format: str = "prediction"
    fetch: FetchPolicy = field(default_factory=FetchPolicy)
    max_pixels: int = DEFAULT_MAX_PIXELS
    features: tuple[Feature, ...] = ()
    feature_defaults: Mapping[str, Any] = field(default_factory=dict)
    output_fields: Mapping[str, str] = field(default_factory=dict)
    id_field: str = "id"
    registry: RegistrySettings | None = None
    subject_strategy: SubjectStrategy = "topic"
    input_schema: Path | None = None
    output_schema: Path | None = None
    message_type: str | None = None


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
    signature: Signature | None = None
    if spec.model.targets:
        members = await _remote(spec, stack)
        if spec.codec.kind in EVENT_FORMATS:
            signature = await _remote_signature(members[0], spec.codec.signature_name)
        predictors = [wrap(member) for member in members]
        fallback = await _fallback(spec, stack, wrap)
    else:
        embedded = await _embedded_model(spec, stack)
        signature = _embedded_signature(embedded, spec.codec.signature_name)
        predictors, fallback = [wrap(embedded)], None
    codec = _codec(spec.codec, signature, spec.processor.output_topic, stack)
    return StreamProcessor(spec.processor, predictors, codec, fallback, on_ready=on_ready)


async def _remote(spec: PipelineSpec, stack: contextlib.AsyncExitStack) -> list[Predictor]:
    members: list[Predictor] = list(create_members(spec.model))
    for member in members:
        stack.push_async_callback(member.close)
    return members


async def _remote_signature(member: Predictor, signature_name: str | None) -> Signature | None:
    """The model's signature from the first server's metadata; None (features and output
    fields must then be declared) when it has none or does not answer in time."""
    signature = getattr(member, "signature", None)
    if signature is None:
        return None
    try:
        found = await asyncio.wait_for(signature(signature_name), REMOTE_SIGNATURE_TIMEOUT_S)
    except (StreamserveError, TimeoutError, OSError) as exc:
        log.warning("model signature unknown (%s): %s", member.target, exc)
        return None
    return found if isinstance(found, Signature) else None


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


def _embedded_signature(embedded: Any, signature_name: str | None) -> Signature | None:
    """The embedded model's signature (None when not known yet)."""
    try:
        with embedded.manager.handle(embedded.model_name) as handle:
            signature = handle.servable.signatures[signature_name or DEFAULT_SIGNATURE]
    except Exception:  # no version loaded yet / unknown signature: infer from the records
        return None
    return signature if isinstance(signature, Signature) else None


def _codec(
    spec: CodecSpec,
    signature: Signature | None,
    output_topic: str,
    stack: contextlib.AsyncExitStack,
) -> RecordCodec:
    if spec.kind in EVENT_FORMATS:
        return _event_codec(spec, signature, output_topic, stack)
    if spec.output_format == "enriched":
        raise InvalidArgument(
            f"--output-format enriched needs structured records (--input-format "
            f"{', '.join(EVENT_FORMATS)}), not {spec.kind}"
        )
    if spec.kind == "tensor":
        dtypes = {name: s.dtype for name, s in signature.inputs.items()} if signature else {}
        return TensorJsonCodec({**dtypes, **spec.input_dtypes}, spec.signature_name)
    if spec.kind != "image":
        raise InvalidArgument(
            f"unknown input format {spec.kind!r}; use tensor, image, {', '.join(EVENT_FORMATS)}"
        )
    fetcher = ImageFetcher(spec.fetch)
    stack.push_async_callback(fetcher.close)
    return ImageCodec(
        fetcher,
        output_format="classic" if spec.output_format == "classic" else "json",
        signature_name=spec.signature_name,
        max_pixels=spec.max_pixels,
    )


def _event_codec(
    spec: CodecSpec,
    signature: Signature | None,
    output_topic: str,
    stack: contextlib.AsyncExitStack,
) -> EventCodec:
    if spec.output_format == "classic":
        raise InvalidArgument("--output-format classic is for images; use prediction or enriched")
    if spec.features:
        inputs = signature.inputs if signature is not None else None
        features = FeatureMapping(spec.features, spec.feature_defaults, inputs)
    else:
        features = FeatureMapping.from_signature(signature, spec.feature_defaults)
    sources = (
        [parse_source(name, text, signature) for name, text in spec.output_fields.items()]
        if spec.output_fields
        else default_sources(signature)
    )
    predictions = PredictionFields(sources)
    layout = OutputLayout(predictions.fields, spec.output_format == "enriched", spec.id_field)
    registry = None
    if spec.registry is not None:
        registry = Registry(spec.registry)
        stack.callback(registry.close)
    options = FormatOptions(
        layout,
        output_topic,
        registry,
        spec.subject_strategy,
        spec.input_schema,
        spec.output_schema,
        spec.message_type,
    )
    record_format = create_format(spec.kind, options)
    return EventCodec(record_format, features, predictions, layout, spec.signature_name)


def create_format(name: str, options: FormatOptions) -> RecordFormat:
    """The record format ``name`` (one of :data:`EVENT_FORMATS`), each imported on use."""
    if name != "json" and options.registry is None and options.input_schema is None:
        raise InvalidArgument(
            f"--input-format {name} needs a schema registry (--schema-registry-url or "
            "schema.registry.url in --kafka-config) or a schema file (--input-schema)"
        )
    module = FORMAT_MODULES.get(name)
    if module is None:
        raise InvalidArgument(
            f"unknown input format {name!r}; use one of {', '.join(EVENT_FORMATS)}"
        )
    create: Callable[[FormatOptions], RecordFormat] = importlib.import_module(module).create
    return create(options)
