"""Spread calls over several model servers: least outstanding requests, ties round-robin.

Least-outstanding adapts to uneven servers (a slow or busy one keeps more calls in flight,
so it is picked less) without any timing state. Ties rotate so that an idle fleet still
shares the load.

Each member keeps its identity (``target``) so the stream processor can wrap members in
per-target circuit breakers and build the balancer over the wrapped ones. A member that
has an ``available()`` method returning ``False`` (an open breaker) is skipped; when no
member is available the call fails with :class:`~streamserve.errors.Unavailable`.
Errors from a member propagate unchanged: the balancer does not retry (the processor owns
retries, so that it can count and back off).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from streamserve.errors import Unavailable
from streamserve.predictors.base import Prediction, Predictor


@runtime_checkable
class TargetPredictor(Predictor, Protocol):
    """A predictor bound to one server address (``"grpc://h:8500"``, ``"http://h:8501"``)."""

    target: str


@runtime_checkable
class SupportsAvailability(Protocol):
    def available(self) -> bool: ...


class BalancedPredictor:
    """A :class:`Predictor` over several :class:`TargetPredictor` members.

    Safe for concurrent calls from one event loop (the counters are only touched between
    awaits). ``close()`` closes the members.
    """

    mode = "remote"

    def __init__(self, members: Sequence[TargetPredictor]) -> None:
        if not members:
            raise ValueError("BalancedPredictor needs at least one member")
        self._members = list(members)
        self._outstanding = [0] * len(self._members)
        self._cursor = 0

    @property
    def members(self) -> list[TargetPredictor]:
        return list(self._members)

    @property
    def target(self) -> str:
        return ",".join(member.target for member in self._members)

    def outstanding(self) -> dict[str, int]:
        """Calls in flight per target, for metrics and tests."""
        return {m.target: n for m, n in zip(self._members, self._outstanding, strict=True)}

    def pick(self) -> int:
        """Index of the available member with the fewest calls in flight; ties rotate."""
        count = len(self._members)
        best: int | None = None
        for offset in range(count):
            index = (self._cursor + offset) % count
            if not _is_available(self._members[index]):
                continue
            if best is None or self._outstanding[index] < self._outstanding[best]:
                best = index
        if best is None:
            raise Unavailable(f"all {count} model server targets are unavailable: {self.target}")
        self._cursor = (best + 1) % count
        return best

    async def predict(
        self, inputs: Mapping[str, np.ndarray], signature_name: str | None = None
    ) -> Prediction:
        index = self.pick()
        self._outstanding[index] += 1
        try:
            return await self._members[index].predict(inputs, signature_name)
        finally:
            self._outstanding[index] -= 1

    async def close(self) -> None:
        for member in self._members:
            await member.close()


def _is_available(member: object) -> bool:
    return not isinstance(member, SupportsAvailability) or member.available()
