"""One way to wait for a condition: poll it until it holds or a deadline passes.

Used by the demo, the benchmarks, the test helpers and the tests, instead of hand-written
``while time.monotonic() < deadline`` loops or sleeps.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class WaitTimeout(TimeoutError):
    """``what`` did not happen within the timeout."""


def wait_until(
    predicate: Callable[[], T],
    timeout: float,
    what: str,
    interval: float = 0.05,
    describe: Callable[[], str] | None = None,
) -> T:
    """Call ``predicate`` until it returns a truthy value, and return that value.

    Raises :class:`WaitTimeout` naming ``what`` (plus ``describe()``, if given, for
    context such as a log tail) when ``timeout`` seconds pass first. An exception raised
    by ``predicate`` propagates at once: a predicate can fail fast (a child process died).
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            detail = f"\n{describe()}" if describe is not None else ""
            raise WaitTimeout(f"{what}: not within {timeout:g} s{detail}")
        time.sleep(min(interval, remaining))
