import itertools

import pytest

from streamserve.waiting import WaitTimeout, wait_until


def test_returns_the_first_truthy_value() -> None:
    counter = itertools.count()
    assert wait_until(lambda: next(counter) >= 3 and "done", timeout=5, what="count") == "done"


def test_timeout_names_what_was_awaited_and_its_context() -> None:
    with pytest.raises(WaitTimeout, match=r"broker ready: not within 0.1 s\nlog tail"):
        wait_until(lambda: False, timeout=0.1, what="broker ready", describe=lambda: "log tail")


def test_a_failing_predicate_fails_at_once() -> None:
    def boom() -> bool:
        raise RuntimeError("child exited")

    with pytest.raises(RuntimeError, match="child exited"):
        wait_until(boom, timeout=60, what="never")
