"""The gRPC edge: every StreamserveError code has a status; failures end calls cleanly."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import grpc
import pytest

from streamserve.errors import Code, NotFound
from streamserve.server.grpc_errors import GRPC_STATUS, grpc_method

pytestmark = pytest.mark.timeout(30)


class Aborted(Exception):
    pass


class FakeContext:
    """Records ``abort`` like grpc.aio does (abort raises to end the handler)."""

    def __init__(self) -> None:
        self.aborted: tuple[grpc.StatusCode, str] | None = None

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.aborted = (code, details)
        raise Aborted


class Core:
    def __init__(self) -> None:
        self.seen: list[tuple[Any, ...]] = []
        self.observed = True

    def observe_request(self, *args: Any) -> None:
        self.seen.append(args[:5])


class Servicer:
    def __init__(self, error: Exception | None) -> None:
        self.core = Core()
        self.error = error

    @grpc_method("tfserving", "predict", lambda request: request, lambda response: "3")
    async def Predict(self, request: Any, context: Any) -> str:
        if self.error is not None:
            raise self.error
        return "ok"


def call(servicer: Servicer) -> FakeContext:
    context = FakeContext()
    with contextlib.suppress(Aborted):
        asyncio.run(servicer.Predict("m", context))
    return context


def test_every_code_has_a_grpc_status() -> None:
    assert set(GRPC_STATUS) == set(Code)
    assert all(GRPC_STATUS[code].value[0] == int(code) for code in Code)


def test_success_is_observed_with_the_answering_version() -> None:
    servicer = Servicer(None)
    assert call(servicer).aborted is None
    assert servicer.core.seen == [("m", "3", "tfserving", "predict", "OK")]


def test_streamserve_error_maps_to_its_status() -> None:
    servicer = Servicer(NotFound("Servable not found for request: Latest(m)"))
    assert call(servicer).aborted == (
        grpc.StatusCode.NOT_FOUND,
        "Servable not found for request: Latest(m)",
    )
    assert servicer.core.seen == [("m", "", "tfserving", "predict", "NOT_FOUND")]


def test_unexpected_error_is_internal_with_its_message() -> None:
    servicer = Servicer(RuntimeError("boom"))
    assert call(servicer).aborted == (grpc.StatusCode.INTERNAL, "RuntimeError: boom")
    assert servicer.core.seen[0][4] == "INTERNAL"
