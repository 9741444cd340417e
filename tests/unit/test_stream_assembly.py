"""streamserve.stream.assembly: one spec → predictors, codec and processor (no Kafka needed
to assemble; nothing runs)."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import numpy as np
import pytest

from streamserve.errors import InvalidArgument
from streamserve.models.toy import build_tiny
from streamserve.predictors.factory import PredictorSpec
from streamserve.stream.assembly import CodecSpec, PipelineSpec, assemble
from streamserve.stream.codecs import ImageCodec, TensorJsonCodec
from streamserve.stream.processor import ProcessorConfig

CONFIG = ProcessorConfig(
    bootstrap_servers="127.0.0.1:1", input_topic="in", output_topic="out", group_id="g"
)


def assembled(spec: PipelineSpec, **kwargs: object) -> tuple[object, list[str]]:
    """(processor, the predictor modes wrapped) with everything closed again."""
    wrapped: list[str] = []

    def wrap(predictor):  # type: ignore[no-untyped-def]
        wrapped.append(predictor.mode)
        return predictor

    async def go() -> object:
        async with contextlib.AsyncExitStack() as stack:
            return await assemble(spec, stack, wrap=wrap, **kwargs)  # type: ignore[arg-type]

    return asyncio.run(go()), wrapped


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("models") / "tiny"
    build_tiny(base / "1", width=4)
    return base


def test_embedded_codec_takes_input_dtypes_from_the_model(tiny: Path) -> None:
    spec = PipelineSpec(CONFIG, PredictorSpec(model_name="tiny", model_base_path=tiny))
    processor, wrapped = assembled(spec)
    assert wrapped == ["embedded"]
    assert isinstance(processor.codec, TensorJsonCodec)  # type: ignore[attr-defined]
    assert processor.codec.dtypes == {"x": np.dtype(np.float32)}  # type: ignore[attr-defined]


def test_explicit_input_dtypes_win(tiny: Path) -> None:
    codec = CodecSpec(input_dtypes={"x": "float64"})
    spec = PipelineSpec(CONFIG, PredictorSpec(model_base_path=tiny), codec)
    processor, _ = assembled(spec)
    assert processor.codec.dtypes == {"x": np.dtype(np.float64)}  # type: ignore[attr-defined]


def test_remote_targets_each_get_a_predictor_and_the_fallback_is_embedded(tiny: Path) -> None:
    model = PredictorSpec(targets=["grpc://127.0.0.1:1", "http://127.0.0.1:2"], model_name="tiny")
    spec = PipelineSpec(CONFIG, model, CodecSpec(kind="image"), fallback_base_path=tiny)
    processor, wrapped = assembled(spec)
    assert wrapped.count("fallback") == 1 and len(wrapped) == 3
    assert isinstance(processor.codec, ImageCodec)  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (PipelineSpec(CONFIG, PredictorSpec()), "model server targets or a model base path"),
        (
            PipelineSpec(CONFIG, PredictorSpec(model_base_path="."), fallback_base_path="."),
            "fallback model only applies to a remote model",
        ),
        (
            PipelineSpec(CONFIG, PredictorSpec(model_base_path=".", model_label="stable")),
            "model label needs a remote model",
        ),
    ],
)
def test_inconsistent_specs_are_invalid(spec: PipelineSpec, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        assembled(spec)
