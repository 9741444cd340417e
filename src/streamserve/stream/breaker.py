"""A circuit breaker per remote target, so a dead model server costs waiting, not records.

States and moves::

    CLOSED --(failure_threshold consecutive failures)--> OPEN
    OPEN --(cool-down elapsed, next caller becomes the one probe)--> HALF_OPEN
    HALF_OPEN --(probe succeeds)--> CLOSED
    HALF_OPEN --(probe fails)--> OPEN (cool-down doubles, up to max_cooldown_s)

The breaker is a plain, synchronous state machine with an injectable clock; callers
(see :mod:`streamserve.stream.invoker`) decide what "failure" means (only transient
errors count: a model that rejects an input is a healthy server). ``on_change`` is
called on every transition with ``(breaker, old_state, new_state)`` — metrics and logs
hang there. Not thread-safe: use it from one event loop.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from dataclasses import dataclass


class BreakerState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"

    @property
    def gauge_value(self) -> int:
        """0 closed, 1 half-open, 2 open: bigger is worse, for dashboards."""
        return {"closed": 0, "half-open": 1, "open": 2}[self.value]


@dataclass(frozen=True)
class BreakerPolicy:
    failure_threshold: int = 5
    cooldown_s: float = 1.0
    max_cooldown_s: float = 10.0

    def __post_init__(self) -> None:
        if (
            self.failure_threshold < 1
            or self.cooldown_s <= 0
            or self.max_cooldown_s < self.cooldown_s
        ):
            raise ValueError("need failure_threshold >= 1 and 0 < cooldown_s <= max_cooldown_s")


ChangeCallback = Callable[["CircuitBreaker", BreakerState, BreakerState], None]


class CircuitBreaker:
    def __init__(
        self,
        name: str,
        policy: BreakerPolicy | None = None,
        on_change: ChangeCallback | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.policy = policy or BreakerPolicy()
        self.on_change = on_change
        self._clock = clock
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._cooldown_s = self.policy.cooldown_s
        self._opened_at = 0.0
        self._probe_out = False

    @property
    def state(self) -> BreakerState:
        return self._state

    @property
    def consecutive_failures(self) -> int:
        return self._failures

    def available(self) -> bool:
        """Would :meth:`try_acquire` let a call through now? (No side effects.)"""
        if self._state is BreakerState.CLOSED:
            return True
        if self._state is BreakerState.HALF_OPEN:
            return not self._probe_out
        return self.seconds_until_probe() <= 0

    def seconds_until_probe(self) -> float:
        """0 when a call may go now; else how long until the next probe is allowed."""
        if self._state is not BreakerState.OPEN:
            return 0.0 if self.available() else self._cooldown_s
        return max(0.0, self._opened_at + self._cooldown_s - self._clock())

    def try_acquire(self) -> bool:
        """Ask to make one call. In OPEN after the cool-down, the caller becomes the probe."""
        if self._state is BreakerState.CLOSED:
            return True
        if self._state is BreakerState.OPEN and self.seconds_until_probe() <= 0:
            self._move(BreakerState.HALF_OPEN)
        if self._state is BreakerState.HALF_OPEN and not self._probe_out:
            self._probe_out = True
            return True
        return False

    def record_success(self) -> None:
        self._failures = 0
        if self._state is not BreakerState.CLOSED:
            self._probe_out = False
            self._cooldown_s = self.policy.cooldown_s
            self._move(BreakerState.CLOSED)

    def record_failure(self) -> None:
        self._failures += 1
        if self._state is BreakerState.HALF_OPEN:
            self._cooldown_s = min(self._cooldown_s * 2, self.policy.max_cooldown_s)
            self._open()
        elif self._state is BreakerState.CLOSED and self._failures >= self.policy.failure_threshold:
            self._open()

    def release(self) -> None:
        """A call ended without telling anything (cancelled): free the probe slot."""
        if self._state is BreakerState.HALF_OPEN and self._probe_out:
            self._probe_out = False

    def _open(self) -> None:
        self._probe_out = False
        self._opened_at = self._clock()
        self._move(BreakerState.OPEN)

    def _move(self, new: BreakerState) -> None:
        old, self._state = self._state, new
        if old is not new and self.on_change is not None:
            self.on_change(self, old, new)

    def __repr__(self) -> str:
        return f"CircuitBreaker({self.name!r}, {self._state.value}, failures={self._failures})"
