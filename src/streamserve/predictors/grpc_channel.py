"""A gRPC target: one long-lived ``grpc.aio`` channel (or one per call, for the baseline).

Channels are created lazily inside the running event loop (``grpc.aio`` binds a channel
to the loop that creates it) and reused for every call: HTTP/2 multiplexes concurrent
calls over one connection, so a channel per call only adds a TCP handshake and HTTP/2
setup to every record. ``per_call_channel=True`` does exactly that, to measure the
classic example's cost in the benchmark.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

import grpc

from streamserve.errors import Code
from streamserve.predictors.status import error_from_code, error_from_transport

MAX_MESSAGE_BYTES = 64 * 1024 * 1024

# Reconnect quickly after a server restart: gRPC's default backoff grows to 120 s, which
# would keep a stream paused long after its model server is back.
CHANNEL_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
)

Stub = TypeVar("Stub")
Result = TypeVar("Result")


class GrpcTarget(Generic[Stub]):
    """Calls on one ``host:port`` through a stub built by ``stub_factory(channel)``.

    Every :class:`grpc.aio.AioRpcError` becomes a ``StreamserveError`` via the status table.
    """

    def __init__(
        self,
        target: str,
        stub_factory: Callable[[grpc.aio.Channel], Stub],
        per_call_channel: bool = False,
        options: tuple[tuple[str, int], ...] = CHANNEL_OPTIONS,
    ) -> None:
        self.target = target
        self._stub_factory = stub_factory
        self._per_call_channel = per_call_channel
        self._options = list(options)
        self._channel: grpc.aio.Channel | None = None
        self._stub: Stub | None = None

    async def call(self, invoke: Callable[[Stub], Awaitable[Result]]) -> Result:
        try:
            if self._per_call_channel:
                async with self._new_channel() as channel:
                    return await invoke(self._stub_factory(channel))
            return await invoke(self._shared_stub())
        except grpc.aio.AioRpcError as exc:
            code = Code(exc.code().value[0])
            raise error_from_code(code, exc.details() or "", f"grpc://{self.target}") from exc
        except grpc.aio.UsageError as exc:  # e.g. the channel was closed under us
            raise error_from_transport(exc, f"grpc://{self.target}") from exc

    async def close(self) -> None:
        channel, self._channel, self._stub = self._channel, None, None
        if channel is not None:
            await channel.close()

    def _shared_stub(self) -> Stub:
        if self._stub is None:
            self._channel = self._new_channel()
            self._stub = self._stub_factory(self._channel)
        return self._stub

    def _new_channel(self) -> grpc.aio.Channel:
        return grpc.aio.insecure_channel(self.target, options=self._options)
