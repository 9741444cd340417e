"""Calling the model without losing records: retries, circuit breakers, fallback, isolation.

- :class:`GuardedPredictor` wraps one target's predictor in a
  :class:`~streamserve.stream.breaker.CircuitBreaker`; only transient errors count as
  failures (a server that rejects an input is healthy).
- :class:`ModelInvoker` calls the primary predictor (often a balancer over guarded
  targets). Transient errors (UNAVAILABLE, DEADLINE_EXCEEDED, ...) are retried forever
  with capped exponential backoff and full jitter: a transient error never sends a record
  to the DLQ. While every breaker is open the invoker either calls the fallback predictor
  (outputs say ``mode: "fallback"``) or waits for the next half-open probe; ``blocked``
  tells the processor to pause consumption meanwhile.
- :meth:`ModelInvoker.predict_each` runs one micro-batch and, when the model rejects the
  batch, bisects it to find the poison record(s), so good records still get outputs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import cast

import numpy as np

from streamserve.errors import Code, InputRejected, InvalidArgument, StreamserveError, Unavailable
from streamserve.predictors.base import Prediction, Predictor
from streamserve.stream.breaker import BreakerPolicy, BreakerState, CircuitBreaker
from streamserve.stream.codecs import DecodedRecord
from streamserve.stream.errors import RecordError
from streamserve.stream.telemetry import StreamMetrics, log_event

log = logging.getLogger("streamserve.stream.invoker")

PREDICT = "predict"

TRANSIENT_CODES = frozenset(
    {
        Code.UNAVAILABLE,
        Code.DEADLINE_EXCEEDED,
        Code.RESOURCE_EXHAUSTED,
        Code.ABORTED,
        Code.CANCELLED,
        Code.NOT_FOUND,  # a restarting server has not loaded the model yet
    }
)


def is_transient(exc: BaseException) -> bool:
    """Worth retrying later: the call failed, not the record."""
    if isinstance(exc, StreamserveError):
        return exc.code in TRANSIENT_CODES
    return isinstance(exc, ConnectionError | TimeoutError)


@dataclass(frozen=True)
class RetryPolicy:
    initial_backoff_s: float = 0.05
    max_backoff_s: float = 2.0
    multiplier: float = 2.0

    def backoff(self, attempt: int) -> float:
        """Full jitter: uniform in [0, min(cap, initial * multiplier**(attempt-1))]."""
        ceiling = min(self.max_backoff_s, self.initial_backoff_s * self.multiplier ** (attempt - 1))
        return random.uniform(0, ceiling)


class GuardedPredictor:
    """One target's predictor behind its own circuit breaker (a balancer member)."""

    def __init__(self, predictor: Predictor, breaker: CircuitBreaker) -> None:
        self.predictor = predictor
        self.breaker = breaker
        self.target = str(getattr(predictor, "target", breaker.name))
        self.mode = predictor.mode

    def available(self) -> bool:
        return self.breaker.available()

    async def predict(
        self, inputs: Mapping[str, np.ndarray], signature_name: str | None = None
    ) -> Prediction:
        if not self.breaker.try_acquire():
            raise Unavailable(f"circuit breaker for {self.target} is {self.breaker.state.value}")
        try:
            prediction = await self.predictor.predict(inputs, signature_name)
        except Exception as exc:
            if is_transient(exc):
                self.breaker.record_failure()
            else:
                self.breaker.record_success()  # the server answered
            raise
        except BaseException:
            self.breaker.release()
            raise
        self.breaker.record_success()
        return prediction

    async def close(self) -> None:
        await self.predictor.close()


@dataclass
class Outcome:
    """One record's share of a model call: its output rows, or why it has none."""

    rows: dict[str, np.ndarray] | None = None
    model_name: str = ""
    model_version: int = 0
    mode: str = ""
    error: RecordError | None = None


@dataclass(slots=True)
class Part:
    """Consecutive records of one micro-batch with one fate: ``outputs`` holds their rows
    stacked along dim 0 (``counts[i]`` rows for record i), or ``error`` says why none."""

    records: int
    counts: Sequence[int]
    outputs: dict[str, np.ndarray] | None = None
    model_name: str = ""
    model_version: int = 0
    mode: str = ""
    error: RecordError | None = None

    def per_record(self) -> list[dict[str, np.ndarray]]:
        """Each record's rows of the outputs (a lone record gets the outputs unsliced)."""
        assert self.outputs is not None
        if self.records == 1:
            return [self.outputs]
        split: list[dict[str, np.ndarray]] = []
        start = 0
        for count in self.counts:
            split.append(
                {name: array[start : start + count] for name, array in self.outputs.items()}
            )
            start += count
        return split


class ModelInvoker:
    def __init__(
        self,
        primary: Predictor,
        guards: Sequence[GuardedPredictor] = (),
        fallback: Predictor | None = None,
        retry: RetryPolicy | None = None,
        metrics: StreamMetrics | None = None,
    ) -> None:
        self.primary = primary
        self.guards = list(guards)
        self.fallback = fallback
        self.retry = retry or RetryPolicy()
        self.metrics = metrics
        self._changed = asyncio.Event()
        for guard in self.guards:
            guard.breaker.on_change = self.on_breaker_change
            if metrics is not None:
                metrics.breaker_state.labels(guard.breaker.name).set(
                    guard.breaker.state.gauge_value
                )

    # ------------------------------------------------------------------ state

    def degraded(self) -> bool:
        """Every breaker is open (or probing): the primary cannot take a call now."""
        return bool(self.guards) and not any(guard.available() for guard in self.guards)

    @property
    def blocked(self) -> bool:
        """Calls are waiting for a probe and there is no fallback: pause consumption."""
        return self.fallback is None and self.degraded()

    def on_breaker_change(
        self, breaker: CircuitBreaker, old: BreakerState, new: BreakerState
    ) -> None:
        """Hook for :class:`CircuitBreaker` ``on_change``: wake waiters, log, count."""
        log_event(
            log,
            f"breaker {new.value}",
            logging.WARNING if new is BreakerState.OPEN else logging.INFO,
            target=breaker.name,
            previous=old.value,
            failures=breaker.consecutive_failures,
        )
        if self.metrics is not None:
            self.metrics.breaker_state.labels(breaker.name).set(new.gauge_value)
            self.metrics.breaker_transitions.labels(breaker.name, new.value).inc()
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    # ------------------------------------------------------------------ calls

    async def predict(
        self, inputs: Mapping[str, np.ndarray], signature_name: str | None = None
    ) -> tuple[Prediction, str]:
        """Call until it succeeds or fails for a non-transient reason; return (result, mode)."""
        attempt = 0
        while True:
            predictor = self._choose()
            if predictor is None:
                await self._wait_for_probe()
                continue
            started = time.perf_counter()
            try:
                prediction = await predictor.predict(inputs, signature_name)
            except Exception as exc:
                if not is_transient(exc):
                    raise
                attempt += 1
                self._note_retry(exc, attempt)
                await asyncio.sleep(self.retry.backoff(attempt))
                continue
            self._observe(predictor.mode, time.perf_counter() - started)
            return prediction, predictor.mode

    def _choose(self) -> Predictor | None:
        if not self.degraded():
            return self.primary
        return self.fallback

    async def _wait_for_probe(self) -> None:
        delay = min(guard.breaker.seconds_until_probe() for guard in self.guards)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), timeout=max(delay, 0.005))

    def _note_retry(self, exc: Exception, attempt: int) -> None:
        reason = exc.code.name if isinstance(exc, StreamserveError) else type(exc).__name__
        if self.metrics is not None:
            self.metrics.retries.labels(reason).inc()
        if attempt == 1 or attempt % 10 == 0:
            log_event(
                log,
                "model call retry",
                logging.WARNING,
                attempt=attempt,
                reason=reason,
                error=str(exc)[:200],
            )

    def _observe(self, mode: str, seconds: float) -> None:
        if self.metrics is not None:
            self.metrics.model_call_latency.labels(mode).observe(seconds)

    async def predict_each(
        self, records: Sequence[DecodedRecord], signature_name: str | None = None
    ) -> list[Outcome]:
        """One outcome per record. A rejected batch is bisected down to the poison records."""
        counts = [record.rows for record in records]
        parts = await self.predict_rows(concat_inputs(records), counts, signature_name)
        outcomes: list[Outcome] = []
        for part in parts:
            if part.error is not None or part.outputs is None:
                outcomes += [Outcome(error=part.error)] * part.records
                continue
            outcomes += [
                Outcome(rows, part.model_name, part.model_version, part.mode)
                for rows in part.per_record()
            ]
        return outcomes

    async def predict_rows(
        self,
        inputs: Mapping[str, np.ndarray],
        counts: Sequence[int],
        signature_name: str | None = None,
    ) -> list[Part]:
        """Predict records whose inputs are stacked in ``inputs`` (``counts[i]`` rows for
        record i, in order): one :class:`Part` when the model takes the whole batch; when it
        rejects it, the batch is bisected down to the poison records, and the parts (in
        record order) cover every record once."""
        try:
            prediction, mode = await self.predict(inputs, signature_name)
            return [whole_part(prediction, counts, mode)]
        except Exception as exc:
            if len(counts) == 1:
                return [Part(1, counts, error=_rejection(exc))]
        middle = len(counts) // 2
        split = sum(counts[:middle])
        first = await self.predict_rows(
            slice_rows(inputs, 0, split), counts[:middle], signature_name
        )
        second = await self.predict_rows(
            slice_rows(inputs, split, None), counts[middle:], signature_name
        )
        return first + second

    async def close(self) -> None:
        """Close the predictors this invoker calls (guards close their wrapped ones)."""
        closing = [self.primary, *([self.fallback] if self.fallback else [])]
        for predictor in closing:
            await predictor.close()


def _rejection(exc: Exception) -> RecordError:
    if isinstance(exc, RecordError):
        return exc
    if isinstance(exc, InputRejected):  # the same reason as embedded mode's; no target
        return RecordError(PREDICT, exc.reason, InvalidArgument.__name__)
    message = exc.message if isinstance(exc, StreamserveError) else str(exc)
    return RecordError(PREDICT, message or type(exc).__name__, type(exc).__name__)


def concat_inputs(records: Sequence[DecodedRecord]) -> dict[str, np.ndarray]:
    if len(records) == 1:
        return records[0].inputs
    names = records[0].inputs.keys()
    return {name: np.concatenate([r.inputs[name] for r in records]) for name in names}


def slice_rows(
    inputs: Mapping[str, np.ndarray], start: int, stop: int | None
) -> dict[str, np.ndarray]:
    return {name: array[start:stop] for name, array in inputs.items()}


def whole_part(prediction: Prediction, counts: Sequence[int], mode: str) -> Part:
    """The model's answer for a whole batch (raises if its rows do not add up)."""
    outputs = prediction.outputs
    if len(counts) > 1:
        total = sum(counts)
        for name, array in outputs.items():
            if array.ndim == 0 or array.shape[0] != total:
                raise RecordError(
                    PREDICT, f"output {name!r} has shape {array.shape}, expected {total} rows"
                )
    return Part(
        len(counts), counts, dict(outputs), prediction.model_name, prediction.model_version, mode
    )


def split_rows(
    prediction: Prediction, records: Sequence[DecodedRecord], mode: str
) -> list[Outcome]:
    """Cut each output along dim 0 into the records' rows (raises if rows do not add up)."""
    counts = [record.rows for record in records]
    total = sum(counts)
    outputs = prediction.outputs
    if len(records) > 1:
        for name, array in outputs.items():
            if array.ndim == 0 or array.shape[0] != total:
                raise RecordError(
                    PREDICT, f"output {name!r} has shape {array.shape}, expected {total} rows"
                )
    outcomes: list[Outcome] = []
    start = 0
    for count in counts:
        rows = (
            outputs
            if len(records) == 1
            else {name: array[start : start + count] for name, array in outputs.items()}
        )
        outcomes.append(Outcome(rows, prediction.model_name, prediction.model_version, mode))
        start += count
    return outcomes


def build_invoker(
    predictors: Sequence[Predictor],
    fallback: Predictor | None = None,
    breaker_policy: BreakerPolicy | None = None,
    retry: RetryPolicy | None = None,
    metrics: StreamMetrics | None = None,
) -> ModelInvoker:
    """Guard each predictor (one per target) with a breaker; balance when there are several."""
    if not predictors:
        raise ValueError("need at least one predictor")
    guards = [
        GuardedPredictor(p, CircuitBreaker(_target_name(p, i), breaker_policy))
        for i, p in enumerate(predictors)
    ]
    primary: Predictor = guards[0]
    if len(guards) > 1:
        from streamserve.predictors.balancer import BalancedPredictor

        primary = cast(Predictor, BalancedPredictor(guards))
    return ModelInvoker(primary, guards, fallback, retry, metrics)


def _target_name(predictor: Predictor, index: int) -> str:
    return str(getattr(predictor, "target", f"target-{index}"))
