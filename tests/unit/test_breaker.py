from __future__ import annotations

import pytest

from streamserve.stream.breaker import BreakerPolicy, BreakerState, CircuitBreaker


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make(threshold: int = 3, cooldown: float = 1.0, max_cooldown: float = 4.0):
    clock = Clock()
    changes: list[tuple[str, str]] = []
    breaker = CircuitBreaker(
        "grpc://h:8500",
        BreakerPolicy(threshold, cooldown, max_cooldown),
        on_change=lambda _b, old, new: changes.append((old.value, new.value)),
        clock=clock,
    )
    return breaker, clock, changes


def test_opens_after_consecutive_failures_only() -> None:
    breaker, _clock, changes = make(threshold=3)
    breaker.record_failure()
    breaker.record_failure()
    breaker.record_success()  # resets the streak
    breaker.record_failure()
    breaker.record_failure()
    assert breaker.state is BreakerState.CLOSED and breaker.try_acquire()
    breaker.record_failure()
    assert breaker.state is BreakerState.OPEN
    assert changes == [("closed", "open")]
    assert not breaker.try_acquire() and not breaker.available()


def test_half_open_admits_exactly_one_probe_after_cooldown() -> None:
    breaker, clock, changes = make(threshold=1, cooldown=1.0)
    breaker.record_failure()
    assert breaker.seconds_until_probe() == pytest.approx(1.0)
    clock.now += 0.5
    assert not breaker.try_acquire()
    clock.now += 0.5
    assert breaker.available()
    assert breaker.try_acquire()  # the probe
    assert breaker.state is BreakerState.HALF_OPEN
    assert not breaker.try_acquire()  # a second caller waits
    breaker.record_success()
    assert breaker.state is BreakerState.CLOSED
    assert changes == [("closed", "open"), ("open", "half-open"), ("half-open", "closed")]


def test_failed_probe_reopens_with_doubled_cooldown_up_to_the_cap() -> None:
    breaker, clock, _ = make(threshold=1, cooldown=1.0, max_cooldown=3.0)
    breaker.record_failure()
    for expected in (2.0, 3.0, 3.0):
        clock.now += 10
        assert breaker.try_acquire()
        breaker.record_failure()
        assert breaker.state is BreakerState.OPEN
        assert breaker.seconds_until_probe() == pytest.approx(expected)
    clock.now += 10
    assert breaker.try_acquire()
    breaker.record_success()
    breaker.record_failure()  # closed again, threshold 1: opens with the base cooldown
    assert breaker.seconds_until_probe() == pytest.approx(1.0)


def test_release_frees_the_probe_slot() -> None:
    breaker, clock, _ = make(threshold=1)
    breaker.record_failure()
    clock.now += 5
    assert breaker.try_acquire()
    breaker.release()  # the probe was cancelled: someone else may probe
    assert breaker.state is BreakerState.HALF_OPEN
    assert breaker.try_acquire()


def test_gauge_values_and_policy_validation() -> None:
    assert [s.gauge_value for s in BreakerState] == [0, 2, 1]
    with pytest.raises(ValueError):
        BreakerPolicy(failure_threshold=0)
    with pytest.raises(ValueError):
        BreakerPolicy(cooldown_s=2.0, max_cooldown_s=1.0)
