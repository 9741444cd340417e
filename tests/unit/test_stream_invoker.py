"""Retries, breakers, fallback and poison isolation around real ONNX Runtime predictions."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest

from streamserve.errors import DeadlineExceeded, InvalidArgument, Unavailable
from streamserve.predictors.base import Prediction
from streamserve.stream.breaker import BreakerPolicy, BreakerState
from streamserve.stream.codecs import DecodedRecord
from streamserve.stream.invoker import RetryPolicy, build_invoker, is_transient, split_rows
from streamserve.stream.telemetry import StreamMetrics

FAST = RetryPolicy(initial_backoff_s=0.001, max_backoff_s=0.002)


class OrtPredictor:
    """The tiny model through onnxruntime; ``failures`` scripted errors come first."""

    mode = "remote"

    def __init__(self, model: Path, target: str = "grpc://a:1", failures=()) -> None:
        import onnxruntime

        self.session = onnxruntime.InferenceSession(str(model))
        self.target = target
        self.failures = list(failures)
        self.calls = 0

    async def predict(self, inputs: Mapping[str, np.ndarray], signature_name=None) -> Prediction:
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        x = inputs["x"]
        if np.isnan(x).any():
            raise InvalidArgument("x contains NaN")
        return Prediction({"y": self.session.run(None, {"x": x})[0]}, "tiny", 1)

    async def close(self) -> None:
        pass


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from streamserve.models.toy import build_tiny

    return build_tiny(tmp_path_factory.mktemp("m") / "1", width=4)


def rows(*values: float) -> list[DecodedRecord]:
    return [
        DecodedRecord(i, None, {"x": np.full((1, 4), v, np.float32)}) for i, v in enumerate(values)
    ]


def test_transient_errors_are_retried_until_success(model: Path) -> None:
    predictor = OrtPredictor(model, failures=[Unavailable("down"), DeadlineExceeded("slow")])
    metrics = StreamMetrics()
    invoker = build_invoker(
        [predictor], retry=FAST, metrics=metrics, breaker_policy=BreakerPolicy(failure_threshold=5)
    )
    outcomes = asyncio.run(invoker.predict_each(rows(0.5)))
    assert outcomes[0].error is None and outcomes[0].mode == "remote" and predictor.calls == 3
    assert metrics.retries.labels("UNAVAILABLE")._value.get() == 1


def test_a_rejected_batch_is_bisected_down_to_the_poison_record(model: Path) -> None:
    predictor = OrtPredictor(model)
    invoker = build_invoker([predictor], retry=FAST)
    outcomes = asyncio.run(invoker.predict_each(rows(0.1, 0.2, float("nan"), 0.4, 0.5)))
    assert [o.error is None for o in outcomes] == [True, True, False, True, True]
    assert outcomes[2].error.stage == "predict" and "NaN" in outcomes[2].error.reason
    assert outcomes[2].error.exception_name == "InvalidArgument"
    good = asyncio.run(invoker.predict_each(rows(0.1)))[0].rows["y"]
    np.testing.assert_allclose(outcomes[0].rows["y"], good)


def test_open_breaker_blocks_then_a_half_open_probe_recovers(model: Path) -> None:
    predictor = OrtPredictor(model, failures=[Unavailable("down")] * 3)
    invoker = build_invoker(
        [predictor], retry=FAST, breaker_policy=BreakerPolicy(failure_threshold=2, cooldown_s=0.05)
    )
    breaker = invoker.guards[0].breaker
    seen: list[BreakerState] = []

    async def scenario() -> None:
        call = asyncio.create_task(invoker.predict_each(rows(0.3)))
        while breaker.state is not BreakerState.OPEN:
            await asyncio.sleep(0.001)
        seen.append(breaker.state)
        assert invoker.blocked  # no fallback: the processor pauses consumption
        outcomes = await call
        assert outcomes[0].error is None

    asyncio.run(scenario())
    assert seen == [BreakerState.OPEN] and breaker.state is BreakerState.CLOSED
    assert not invoker.blocked and predictor.calls == 4


def test_fallback_answers_while_every_breaker_is_open(model: Path) -> None:
    primary = OrtPredictor(model, failures=[Unavailable("down")] * 50)
    fallback = OrtPredictor(model, target="embedded://tiny")
    fallback.mode = "fallback"
    invoker = build_invoker(
        [primary], fallback, retry=FAST, breaker_policy=BreakerPolicy(2, 30, 30)
    )
    outcomes = asyncio.run(invoker.predict_each(rows(0.3, 0.6)))
    assert [o.mode for o in outcomes] == ["fallback", "fallback"]
    assert not invoker.blocked and invoker.degraded()


def test_each_target_has_its_own_breaker(model: Path) -> None:
    dead = OrtPredictor(model, target="grpc://dead:1", failures=[Unavailable("down")] * 50)
    alive = OrtPredictor(model, target="grpc://alive:1")
    invoker = build_invoker([dead, alive], retry=FAST, breaker_policy=BreakerPolicy(2, 30, 30))

    async def many() -> None:
        for _ in range(10):
            assert (await invoker.predict_each(rows(0.2)))[0].error is None

    asyncio.run(many())
    states = {g.target: g.breaker.state for g in invoker.guards}
    assert states == {"grpc://dead:1": BreakerState.OPEN, "grpc://alive:1": BreakerState.CLOSED}


def test_split_rows_and_transient_classification() -> None:
    prediction = Prediction({"y": np.arange(6).reshape(3, 2)}, "m", 2)
    records = [
        DecodedRecord(0, None, {"x": np.zeros((2, 1))}),
        DecodedRecord(1, None, {"x": np.zeros((1, 1))}),
    ]
    first, second = split_rows(prediction, records, "embedded")
    assert first.rows["y"].tolist() == [[0, 1], [2, 3]] and second.rows["y"].tolist() == [[4, 5]]
    with pytest.raises(Exception, match="expected 3 rows"):
        split_rows(Prediction({"y": np.zeros(2)}, "m", 2), records, "embedded")
    assert is_transient(Unavailable("x")) and is_transient(ConnectionError())
    assert not is_transient(InvalidArgument("x")) and not is_transient(ValueError())
