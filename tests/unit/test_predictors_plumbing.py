"""Predictor plumbing without servers: balancing, status mapping, spec parsing."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import numpy as np
import pytest

from streamserve.errors import (
    Code,
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from streamserve.predictors.balancer import BalancedPredictor
from streamserve.predictors.base import Prediction
from streamserve.predictors.factory import PredictorSpec, create_members, parse_targets
from streamserve.predictors.status import error_from_code, error_from_http, error_from_transport
from streamserve.predictors.tfserving_grpc import TfServingGrpcPredictor
from streamserve.predictors.tfserving_rest import TfServingRestPredictor
from streamserve.predictors.v2_grpc import V2GrpcPredictor
from streamserve.predictors.v2_rest import V2RestPredictor


class GatedMember:
    """A target whose calls finish only when the test opens its gate."""

    mode = "remote"

    def __init__(self, target: str) -> None:
        self.target = target
        self.calls = 0
        self.up = True
        self.gate = asyncio.Event()
        self.closed = False

    def available(self) -> bool:
        return self.up

    async def predict(
        self, inputs: Mapping[str, np.ndarray], signature_name: str | None = None
    ) -> Prediction:
        self.calls += 1
        await self.gate.wait()
        return Prediction(dict(inputs), self.target, 1)

    async def close(self) -> None:
        self.closed = True


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_balancer_prefers_least_outstanding_and_rotates_ties() -> None:
    async def go() -> None:
        a, b, c = GatedMember("a"), GatedMember("b"), GatedMember("c")
        balancer = BalancedPredictor([a, b, c])
        x = {"x": np.zeros(1)}
        first = [asyncio.create_task(balancer.predict(x)) for _ in range(3)]
        await _settle()
        assert (a.calls, b.calls, c.calls) == (1, 1, 1)  # ties rotate
        a.gate.set()
        await asyncio.gather(first[0])
        assert balancer.outstanding() == {"a": 0, "b": 1, "c": 1}
        more = [asyncio.create_task(balancer.predict(x)) for _ in range(2)]
        await _settle()
        # a is idle and finishes at once; every new call goes to the least busy target
        assert b.calls == 1 and c.calls == 1 and a.calls == 3
        b.gate.set()
        c.gate.set()
        results = await asyncio.gather(*first[1:], *more)
        assert sorted(r.model_name for r in results) == ["a", "a", "b", "c"]
        assert balancer.outstanding() == {"a": 0, "b": 0, "c": 0}
        await balancer.close()
        assert a.closed and b.closed and c.closed

    asyncio.run(go())


def test_balancer_piles_onto_the_idle_target() -> None:
    async def go() -> None:
        slow, fast = GatedMember("slow"), GatedMember("fast")
        fast.gate.set()
        balancer = BalancedPredictor([slow, fast])
        stuck = asyncio.create_task(balancer.predict({}))
        await _settle()
        for _ in range(10):
            await balancer.predict({})
        assert (slow.calls, fast.calls) == (1, 10)
        slow.gate.set()
        await stuck

    asyncio.run(go())


def test_balancer_skips_unavailable_members() -> None:
    async def go() -> None:
        a, b = GatedMember("a"), GatedMember("b")
        a.gate.set()
        b.gate.set()
        a.up = False
        balancer = BalancedPredictor([a, b])
        for _ in range(4):
            assert (await balancer.predict({})).model_name == "b"
        b.up = False
        with pytest.raises(Unavailable, match="all 2 model server targets are unavailable"):
            await balancer.predict({})
        assert balancer.target == "a,b"

    asyncio.run(go())


def test_balancer_releases_on_error() -> None:
    class Failing(GatedMember):
        async def predict(
            self, inputs: Mapping[str, np.ndarray], signature_name: str | None = None
        ) -> Prediction:
            raise Unavailable("down")

    async def go() -> None:
        balancer = BalancedPredictor([Failing("a")])
        with pytest.raises(Unavailable):
            await balancer.predict({})
        assert balancer.outstanding() == {"a": 0}

    asyncio.run(go())


@pytest.mark.parametrize(
    ("code", "error_type"),
    [
        (Code.UNAVAILABLE, Unavailable),
        (Code.RESOURCE_EXHAUSTED, Unavailable),
        (Code.ABORTED, Unavailable),
        (Code.CANCELLED, Unavailable),
        (Code.DEADLINE_EXCEEDED, DeadlineExceeded),
        (Code.INVALID_ARGUMENT, InvalidArgument),
        (Code.OUT_OF_RANGE, InvalidArgument),
        (Code.FAILED_PRECONDITION, FailedPrecondition),
        (Code.NOT_FOUND, NotFound),
        (Code.INTERNAL, Internal),
    ],
)
def test_code_mapping(code: Code, error_type: type) -> None:
    error = error_from_code(code, "why", "grpc://h:1")
    assert type(error) is error_type
    assert error.message == f"grpc://h:1: {code.name}: why"


@pytest.mark.parametrize(
    ("status", "error_type"),
    [
        (400, InvalidArgument),
        (404, NotFound),
        (413, InvalidArgument),
        (429, Unavailable),
        (500, Internal),
        (502, Unavailable),
        (503, Unavailable),
        (504, DeadlineExceeded),
        (599, Unavailable),
    ],
)
def test_http_mapping(status: int, error_type: type) -> None:
    error = error_from_http(status, b'{"error": "bad input x"}', "http://h:1")
    assert type(error) is error_type
    assert "bad input x" in error.message and f"HTTP {status}" in error.message


def test_transport_mapping() -> None:
    assert isinstance(error_from_transport(TimeoutError(), "t"), DeadlineExceeded)
    assert isinstance(error_from_transport(ConnectionRefusedError("no"), "t"), Unavailable)
    assert "plain text" in error_from_http(503, b"plain text", "t").message


def test_parse_targets() -> None:
    assert parse_targets("grpc://a:1, b:2,http://c:3/") == [
        "grpc://a:1",
        "grpc://b:2",
        "http://c:3",
    ]
    assert parse_targets(["grpc://a:1,grpc://b:2", "https://c:443"]) == [
        "grpc://a:1",
        "grpc://b:2",
        "https://c:443",
    ]
    for bad in ("ftp://a:1", "grpc://a", "http://a:1/path", "grpc://:1"):
        with pytest.raises(InvalidArgument):
            parse_targets(bad)


def test_create_members_types_and_validation() -> None:
    targets = ["grpc://a:1", "http://b:2"]
    tfs = create_members(PredictorSpec(targets, "m", model_label="stable"))
    assert [type(p) for p in tfs] == [TfServingGrpcPredictor, TfServingRestPredictor]
    v2 = create_members(PredictorSpec(targets, "m", model_version=3, protocol="v2"))
    assert [type(p) for p in v2] == [V2GrpcPredictor, V2RestPredictor]
    assert [p.target for p in v2] == targets
    for spec in (
        PredictorSpec(targets, "m", protocol="v3"),
        PredictorSpec(targets, ""),
        PredictorSpec(targets, "m", model_version=1, model_label="x"),
        PredictorSpec(targets, "m", model_label="x", protocol="v2"),
    ):
        with pytest.raises(InvalidArgument):
            create_members(spec)
