"""EmbeddedPredictor: the repository and ONNX runtime in-process, versions and hot reload."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from streamserve.errors import InvalidArgument, NotFound
from streamserve.models.toy import build_multi, build_tiny
from streamserve.predictors.embedded import EmbeddedPredictor
from streamserve.repository import ModelConfig, ModelManager, VersionPolicy, VersionState

pytest.importorskip("onnx")


@pytest.fixture()
def manager(tmp_path: Path) -> Iterator[ModelManager]:
    build_tiny(tmp_path / "tiny" / "1", seed=1)
    build_multi(tmp_path / "multi" / "1")
    configs = [
        ModelConfig("tiny", tmp_path / "tiny", version_policy=VersionPolicy.all()),
        ModelConfig("multi", tmp_path / "multi"),
    ]
    with ModelManager(configs, file_system_poll_wait_seconds=0.1) as started:
        started.start()
        yield started


def test_tiny_outputs_and_version(manager: ModelManager) -> None:
    x = np.random.default_rng(0).standard_normal((5, 64)).astype(np.float32)

    async def go() -> None:
        predictor = EmbeddedPredictor(manager, "tiny")
        try:
            prediction = await predictor.predict({"x": x})
        finally:
            await predictor.close()
        assert predictor.mode == "embedded"
        assert (prediction.model_name, prediction.model_version) == ("tiny", 1)
        y = prediction.outputs["y"]
        assert y.shape == (5, 64) and y.dtype == np.float32 and (y >= 0).all()

    asyncio.run(go())


def test_multi_typed_tensors_and_concurrency(manager: ModelManager) -> None:
    inputs = {
        "x": np.arange(8, dtype=np.float32).reshape(2, 4),
        "ids": np.array([[1, 2], [3, 4]], dtype=np.int64),
        "names": np.array([b"a", "b\u00e9".encode()], dtype=object),
    }

    async def go() -> None:
        predictor = EmbeddedPredictor(manager, "multi", mode="fallback", max_workers=2)
        try:
            results = await asyncio.gather(*(predictor.predict(inputs) for _ in range(8)))
        finally:
            await predictor.close()
        assert predictor.mode == "fallback"
        for prediction in results:
            np.testing.assert_array_equal(prediction.outputs["y"], inputs["x"] * 2)
            np.testing.assert_array_equal(prediction.outputs["ids_out"], inputs["ids"] + 1)
            assert [bytes(v) for v in prediction.outputs["names_out"]] == list(inputs["names"])

    asyncio.run(go())


def test_hot_reload_serves_the_new_version(manager: ModelManager, tmp_path: Path) -> None:
    x = np.ones((1, 64), dtype=np.float32)

    async def go() -> None:
        predictor = EmbeddedPredictor(manager, "tiny")
        pinned = EmbeddedPredictor(manager, "tiny", version=1)
        try:
            before = await predictor.predict({"x": x})
            build_tiny(tmp_path / "tiny" / "2", seed=2)
            assert await asyncio.to_thread(
                manager.wait_for_state, "tiny", 2, VersionState.AVAILABLE, 30.0
            )
            after = await predictor.predict({"x": x})
            still_one = await pinned.predict({"x": x})
        finally:
            await predictor.close()
            await pinned.close()
        assert (before.model_version, after.model_version, still_one.model_version) == (1, 2, 1)
        assert not np.allclose(before.outputs["y"], after.outputs["y"])
        np.testing.assert_allclose(before.outputs["y"], still_one.outputs["y"])

    asyncio.run(go())


def test_errors(manager: ModelManager) -> None:
    async def go() -> None:
        predictor = EmbeddedPredictor(manager, "tiny")
        missing = EmbeddedPredictor(manager, "nope")
        try:
            with pytest.raises(InvalidArgument):
                await predictor.predict({"x": np.ones((1, 3), dtype=np.float32)})
            with pytest.raises(NotFound):
                await missing.predict({"x": np.ones((1, 64), dtype=np.float32)})
        finally:
            await predictor.close()
            await missing.close()

    asyncio.run(go())
