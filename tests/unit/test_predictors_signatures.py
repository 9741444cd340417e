"""streamserve.predictors.signatures: one cast and one check for every mode."""

from __future__ import annotations

import asyncio
from types import MappingProxyType

import numpy as np
import pytest

from streamserve.errors import InputRejected, InvalidArgument
from streamserve.predictors.signatures import ModelSignatures, SignatureCache, conform_inputs
from streamserve.runtimes.base import Signature, TensorSpec

SIGNATURE = Signature(
    "serving_default",
    MappingProxyType(
        {
            "x": TensorSpec("x", np.dtype(np.float32), (None, 4)),
            "ids": TensorSpec("ids", np.dtype(np.int64), (None, 2)),
        }
    ),
    MappingProxyType({}),
)


def test_numbers_are_cast_to_the_declared_dtypes() -> None:
    conformed = conform_inputs(
        SIGNATURE, {"x": np.array([[1, 2, 3, 4]]), "ids": np.array([[1.0, 2.0]])}
    )
    assert conformed["x"].dtype == np.float32 and conformed["ids"].dtype == np.int64
    np.testing.assert_array_equal(conformed["x"], [[1, 2, 3, 4]])


def test_wrong_shapes_and_names_fail_with_the_runtimes_message() -> None:
    with pytest.raises(InvalidArgument, match=r"input 'x': expected float32\[\?,4\], got"):
        conform_inputs(SIGNATURE, {"x": np.zeros((1, 3)), "ids": np.zeros((1, 2), np.int64)})
    with pytest.raises(InvalidArgument, match=r"expected inputs: ids: int64.*, x: float32"):
        conform_inputs(SIGNATURE, {"z": np.zeros((1, 4))})


def test_the_cache_fetches_once_per_version_and_names_the_target() -> None:
    fetched: list[int] = []

    async def fetch() -> ModelSignatures:
        fetched.append(1)
        return ModelSignatures({"serving_default": SIGNATURE}, version=1)

    async def go() -> None:
        cache = SignatureCache("grpc://h:1", fetch)
        good = {"x": np.zeros((1, 4), np.int64), "ids": np.zeros((1, 2), np.int64)}
        await cache.conform(good, None)
        cache.observe_version(1)
        await cache.conform(good, None)
        assert len(fetched) == 1
        cache.observe_version(2)  # a reply from another version: read the signature again
        await cache.conform(good, None)
        assert len(fetched) == 2
        with pytest.raises(InputRejected) as rejected:
            await cache.conform({"x": np.zeros((1, 3))}, None)
        assert rejected.value.message.startswith("grpc://h:1: ")
        assert rejected.value.reason.startswith("missing input 'ids'")

    asyncio.run(go())
