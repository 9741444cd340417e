"""A gRPC target: one long-lived ``grpc.aio`` channel (or one per call, for the baseline).

Channels are created lazily inside the running event loop (``grpc.aio`` binds a channel
to the loop that creates it) and reused for every call: HTTP/2 multiplexes concurrent
calls over one connection, so a channel per call only adds a TCP handshake and HTTP/2
setup to every record. ``per_call_channel=True`` does exactly that, to measure the
classic example's cost in the benchmark.

``grpcs://host:port`` targets open TLS channels (CA, client certificate for mutual TLS);
headers of the :class:`~streamserve.predictors.security.ClientSecurity` go with every call
as metadata, on plaintext and TLS channels alike.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

import grpc

from streamserve.errors import Code, InvalidArgument
from streamserve.predictors.remote import RemoteCall, RemotePredictor
from streamserve.predictors.security import PLAINTEXT, ClientSecurity
from streamserve.predictors.signatures import ModelSignatures, SignatureCache
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
Reply = TypeVar("Reply")
GRPC_SCHEMES = ("grpc", "grpcs")


def split_grpc_target(target: str) -> tuple[str, bool]:
    """``"grpcs://h:1"`` → ``("h:1", True)``; ``"grpc://h:1"`` or ``"h:1"`` → ``("h:1", False)``."""
    scheme, sep, address = target.partition("://")
    if not sep:
        return target, False
    if scheme.lower() not in GRPC_SCHEMES:
        raise InvalidArgument(f"gRPC target {target!r}: use grpc:// or grpcs://")
    return address, scheme.lower() == "grpcs"


class _MetadataInterceptor(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """Adds fixed metadata (e.g. ``authorization``) to every unary call."""

    def __init__(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self._metadata = metadata

    async def intercept_unary_unary(
        self, continuation: Callable[[Any, Any], Any], details: Any, request: Any
    ) -> Any:
        metadata = grpc.aio.Metadata(*(details.metadata or ()), *self._metadata)
        return await continuation(details._replace(metadata=metadata), request)


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
        *,
        secure: bool = False,
        security: ClientSecurity = PLAINTEXT,
    ) -> None:
        self.target = target
        self.url = f"{'grpcs' if secure else 'grpc'}://{target}"
        self._secure = secure
        self._security = security
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
            raise error_from_code(code, exc.details() or "", self.url) from exc
        except grpc.aio.UsageError as exc:  # e.g. the channel was closed under us
            raise error_from_transport(exc, self.url) from exc

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
        metadata = self._security.grpc_metadata()
        interceptors = [_MetadataInterceptor(metadata)] if metadata else None
        if self._secure:
            credentials = self._security.grpc_credentials()
            return grpc.aio.secure_channel(
                self.target, credentials, options=self._options, interceptors=interceptors
            )
        return grpc.aio.insecure_channel(
            self.target, options=self._options, interceptors=interceptors
        )


class GrpcPredictor(RemotePredictor, Generic[Stub]):
    """Base of the gRPC predictors: one :class:`GrpcTarget` on ``target`` (``"host:port"``,
    ``"grpc://host:port"``, TLS: ``"grpcs://host:port"``) and the model's signature cache.

    A subclass names its stub, calls its RPCs through :meth:`_unary` and converts the
    messages; it supplies the signatures by overriding :meth:`_fetch_signatures`.
    """

    def __init__(
        self, target: str, call: RemoteCall, stub_factory: Callable[[grpc.aio.Channel], Stub]
    ) -> None:
        super().__init__(call)
        address, secure = split_grpc_target(target)
        self._grpc: GrpcTarget[Stub] = GrpcTarget(
            address, stub_factory, call.per_call_channel, secure=secure, security=call.security
        )
        self.target = self._grpc.url
        self._signatures = SignatureCache(self.target, self._fetch_signatures)

    async def close(self) -> None:
        await self._grpc.close()

    async def _unary(
        self, rpc: Callable[[Stub], Callable[..., Awaitable[Reply]]], request: object
    ) -> Reply:
        """``rpc(stub)(request)`` within the call's deadline; errors as :meth:`GrpcTarget.call`."""

        async def invoke(stub: Stub) -> Reply:
            return await rpc(stub)(request, timeout=self.timeout_s)

        return await self._grpc.call(invoke)

    async def _fetch_signatures(self) -> ModelSignatures:
        raise NotImplementedError
