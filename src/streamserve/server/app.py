"""The model server: one gRPC server and one HTTP server over one :class:`InferenceCore`.

``Server(ServerOptions(...))`` is usable three ways:

- from sync code (tests, the CLI): ``start()`` runs the server on its own event loop in
  a background thread and returns once both ports listen; ``stop()`` shuts it down
  gracefully; ``with Server(options) as server:`` does both;
- from async code: ``async with Server(options) as server:`` runs it on the caller's loop.

Ports: ``grpc_port=0`` / ``rest_port=0`` pick free ports (read them back from
``server.grpc_port`` / ``server.rest_port``); ``rest_port=None`` turns REST off. (The
CLI keeps TF Serving's meaning, where ``--rest_api_port=0`` turns REST off.)

Protocol adapters live in their own modules and are wired explicitly:
:data:`INSTALLED_ADAPTERS` maps each adapter's name to its imported module, and
``ServerOptions.adapters`` names the ones to install, in order. Each implements
:class:`~streamserve.server.context.Adapter` (``install(context: ServerContext)``): it
registers gRPC servicers on ``context.grpc_server``, routes on ``context.rest_app``
(``add_route``), request observers on ``context.core``, and cleanups in
``context.on_stop``. A configured adapter that is not installed, or whose ``install``
fails, stops start-up with a :class:`~streamserve.errors.SetupError` naming it.

Start-up order: the TLS config (``ssl_config_file``) is read first, then the models load;
unless ``allow_partial_start``, a model without an AVAILABLE version stops start-up with
:class:`~streamserve.errors.ModelLoadFailed` before any port opens. Health
(:mod:`streamserve.server.health`) follows the models from then on; reflection lists the
services the adapters registered.

The model runner is chosen here too: the caller's, else a
:class:`~streamserve.server.batching.BatchingRunner` with ``enable_batching``, else a
:class:`~streamserve.server.core.ThreadPoolRunner`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import threading
import time
from collections.abc import Mapping
from types import TracebackType
from typing import TYPE_CHECKING

import grpc
from grpc_health.v1 import health, health_pb2_grpc

from streamserve.errors import InvalidArgument, SetupError, StreamserveError
from streamserve.repository import ConfigFilePoller, ModelManager, VersionState
from streamserve.repository.availability import require_available
from streamserve.server import (
    access_log,
    legacy_inception,
    tfserving_grpc,
    tfserving_rest,
    v2_grpc,
    v2_rest,
)
from streamserve.server import metrics as metrics_adapter
from streamserve.server.batching import (
    BatchingParameters,
    BatchingRunner,
    parse_batching_parameters_file,
    per_model_parameters,
)
from streamserve.server.context import (
    ACCESS_LOG_ADAPTER,
    DEFAULT_ADAPTERS,
    METRICS_ADAPTER,
    Adapter,
    Cleanup,
    ServerContext,
    ServerOptions,
)
from streamserve.server.core import InferenceCore, Runner, ThreadPoolRunner
from streamserve.server.health import HealthReporter, enable_reflection
from streamserve.server.http import App
from streamserve.server.http_limits import (
    HttpLimits,
    guarded_protocol,
)
from streamserve.server.metrics import ServerMetrics
from streamserve.server.tls import TlsConfig, load_ssl_config_file

if TYPE_CHECKING:
    import uvicorn

log = logging.getLogger(__name__)

INSTALLED_ADAPTERS: Mapping[str, Adapter] = {
    "tfserving_grpc": tfserving_grpc,
    "tfserving_rest": tfserving_rest,
    "v2_grpc": v2_grpc,
    "v2_rest": v2_rest,
    "legacy_inception": legacy_inception,
    METRICS_ADAPTER: metrics_adapter,
    ACCESS_LOG_ADAPTER: access_log,
}
_START_TIMEOUT_SECONDS = 60.0


class Server:
    def __init__(
        self,
        options: ServerOptions | None = None,
        manager: ModelManager | None = None,
        runner: Runner | None = None,
    ) -> None:
        self.options = options or ServerOptions()
        self._given_manager = manager
        self._runner = runner
        self.grpc_port = 0
        self.rest_port: int | None = None
        self.context: ServerContext | None = None
        self._stack: contextlib.AsyncExitStack | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_requested: asyncio.Event | None = None

    # -- async API -------------------------------------------------------------------------

    async def start_async(self) -> None:
        async with contextlib.AsyncExitStack() as stack:
            await self._start_parts(stack)
            self._stack = stack.pop_all()

    async def stop_async(self) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            await stack.aclose()

    async def __aenter__(self) -> Server:
        await self.start_async()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop_async()

    # -- sync API (own loop in a thread) ---------------------------------------------------

    def start(self) -> Server:
        started = threading.Event()
        failure: list[BaseException] = []
        self._thread = threading.Thread(
            target=self._thread_main, args=(started, failure), name="streamserve-server"
        )
        self._thread.start()
        started.wait()
        if failure:
            self._thread.join()
            raise failure[0]
        return self

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        with contextlib.suppress(RuntimeError):  # loop already closed
            loop.call_soon_threadsafe(self._request_stop)
        thread.join()
        self._thread = None

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType
    ) -> None:
        self.stop()

    def wait(self) -> None:
        """Block until the server thread ends (after :meth:`stop`)."""
        if self._thread is not None:
            self._thread.join()

    def _request_stop(self) -> None:
        if self._stop_requested is not None:
            self._stop_requested.set()

    def _thread_main(self, started: threading.Event, failure: list[BaseException]) -> None:
        loop = _new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._serve_until_stopped(started, failure))
        finally:
            loop.close()
            self._loop = None
            started.set()

    async def _serve_until_stopped(
        self, started: threading.Event, failure: list[BaseException]
    ) -> None:
        self._stop_requested = asyncio.Event()
        try:
            await self.start_async()
        except BaseException as exc:
            failure.append(exc)
            return
        finally:
            started.set()
        try:
            await self._stop_requested.wait()
        finally:
            await self.stop_async()

    # -- wiring ----------------------------------------------------------------------------

    async def _start_parts(self, stack: contextlib.AsyncExitStack) -> None:
        options = self.options
        adapters = _configured_adapters(options.adapters)
        tls = load_ssl_config_file(options.ssl_config_file) if options.ssl_config_file else None
        https = tls.ssl_context() if tls is not None and options.rest_port is not None else None
        metrics = ServerMetrics() if options.metrics_enabled else None
        manager = await self._start_manager(stack, metrics)
        if not options.allow_partial_start:
            require_available(manager, "--allow_partial_start serves anyway")
        core = InferenceCore(manager, self._build_runner(manager, metrics))
        stack.callback(core.close)
        stack.push_async_callback(core.drain, options.grace_seconds)  # after both servers stop
        grpc_server = grpc.aio.server(options=_grpc_server_options(options))
        health_servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, grpc_server)
        rest_app = None
        if options.rest_port is not None:
            timeout = options.rest_api_timeout_in_ms / 1000 or None
            rest_app = App(options.rest_max_body_bytes, timeout)
        context = ServerContext(
            options, manager, core, grpc_server, rest_app, health_servicer, metrics=metrics
        )
        self.context = context
        stack.push_async_callback(_run_cleanups, context.on_stop)
        _install_adapters(adapters, context)
        enable_reflection(context)
        await HealthReporter(health_servicer, manager).start()
        await self._start_grpc(stack, context, tls)
        if rest_app is not None:
            await self._start_rest(stack, rest_app, https)
        self._start_config_poller(stack, manager)
        stack.push_async_callback(health_servicer.enter_graceful_shutdown)

    async def _start_manager(
        self, stack: contextlib.AsyncExitStack, metrics: ServerMetrics | None
    ) -> ModelManager:
        if self._given_manager is not None:
            if metrics is not None:
                metrics.follow(self._given_manager)
            return self._given_manager
        options = self.options
        manager = ModelManager(
            options.model_configs(),
            file_system_poll_wait_seconds=options.file_system_poll_wait_seconds,
            allow_version_labels_for_unavailable_models=(
                options.allow_version_labels_for_unavailable_models
            ),
            warmup=options.enable_model_warmup,
            load_options=options.load_options(),
        )
        if metrics is not None:
            metrics.follow(manager)  # before start: the initial loads' latency is recorded too
        await asyncio.to_thread(manager.start)
        stack.push_async_callback(asyncio.to_thread, manager.stop)
        return manager

    def _build_runner(self, manager: ModelManager, metrics: ServerMetrics | None) -> Runner:
        """The caller's runner, else a batching one with ``enable_batching``, else a pool."""
        options = self.options
        if self._runner is not None:
            return self._runner
        if not options.enable_batching:
            return ThreadPoolRunner(options.predict_threads)
        return _batching_runner(options, manager, metrics)

    async def _start_grpc(
        self, stack: contextlib.AsyncExitStack, context: ServerContext, tls: TlsConfig | None
    ) -> None:
        address = f"{_grpc_host(self.options.host)}:{self.options.grpc_port}"
        server = context.grpc_server
        try:
            if tls is None:
                port = server.add_insecure_port(address)
            else:
                port = server.add_secure_port(address, tls.grpc_credentials())
        except RuntimeError as exc:
            raise SetupError(f"cannot listen for gRPC on {address}: {exc}") from exc
        if port == 0:
            raise SetupError(f"cannot listen for gRPC on {address}")
        await context.grpc_server.start()
        self.grpc_port = port
        stack.push_async_callback(context.grpc_server.stop, self.options.grace_seconds)

    async def _start_rest(
        self, stack: contextlib.AsyncExitStack, app: App, https: ssl.SSLContext | None
    ) -> None:
        import uvicorn

        sock = _listen(self.options.host, self.options.rest_port or 0, self.options.reuse_port)
        stack.callback(sock.close)
        options = self.options
        limits = HttpLimits(
            header_timeout_s=options.rest_api_header_timeout_seconds,
            body_timeout_s=options.rest_api_body_timeout_seconds,
            max_header_bytes=options.rest_api_max_header_bytes,
            max_headers=options.rest_api_max_headers,
        )
        config = uvicorn.Config(
            app,
            http=guarded_protocol(limits),  # httptools with header/body limits
            lifespan="off",
            access_log=False,
            log_level="warning",
            timeout_keep_alive=75,
            timeout_graceful_shutdown=int(self.options.grace_seconds) or None,
        )
        if https is not None:
            config.load()
            config.ssl = https  # HTTPS with the gRPC port's certificate
        server = uvicorn.Server(config)
        task = asyncio.create_task(server.serve(sockets=[sock]), name="rest-server")
        await _wait_started(server, task)
        self.rest_port = sock.getsockname()[1]

        async def stop_rest() -> None:
            server.should_exit = True
            await task

        stack.push_async_callback(stop_rest)

    def _start_config_poller(self, stack: contextlib.AsyncExitStack, manager: ModelManager) -> None:
        options = self.options
        if not options.model_config_file or options.model_config_file_poll_wait_seconds <= 0:
            return
        poller = ConfigFilePoller(
            manager,
            options.model_config_file,
            options.model_config_file_poll_wait_seconds,
            options.traffic_split_file,
        ).start()
        stack.push_async_callback(asyncio.to_thread, poller.stop)


def _configured_adapters(names: tuple[str, ...]) -> list[tuple[str, Adapter]]:
    missing = [name for name in names if name not in INSTALLED_ADAPTERS]
    if missing:
        raise SetupError(
            f"server adapter(s) {', '.join(map(repr, missing))} configured but not installed; "
            f"installed: {', '.join(INSTALLED_ADAPTERS)}"
        )
    return [(name, INSTALLED_ADAPTERS[name]) for name in names]


def _install_adapters(adapters: list[tuple[str, Adapter]], context: ServerContext) -> None:
    for name, adapter in adapters:
        try:
            adapter.install(context)
        except StreamserveError as exc:
            raise SetupError(f"server adapter {name!r} failed to install: {exc.message}") from exc
        except Exception as exc:
            raise SetupError(f"server adapter {name!r} failed to install: {exc!r}") from exc


def _batching_runner(
    options: ServerOptions, manager: ModelManager, metrics: ServerMetrics | None
) -> BatchingRunner:
    base = BatchingParameters()
    if options.batching_parameters_file:
        base = parse_batching_parameters_file(options.batching_parameters_file)
    params_for = per_model_parameters(lambda name: manager.config(name).base_path, base)
    runner = BatchingRunner(base, params_for=params_for, metrics=metrics)

    def forget_unloaded(name: str, version: int, state: int, load_seconds: float | None) -> None:
        if state == VersionState.END:
            runner.forget(name, version)

    manager.add_listener(forget_unloaded)
    return runner


async def _run_cleanups(cleanups: list[Cleanup]) -> None:
    for cleanup in reversed(cleanups):
        try:
            result = cleanup()
            if result is not None:
                await result
        except Exception:
            log.exception("adapter cleanup failed")


async def _wait_started(server: uvicorn.Server, task: asyncio.Task[None]) -> None:
    deadline = time.monotonic() + _START_TIMEOUT_SECONDS
    while not server.started:
        if task.done():
            task.result()  # raises what stopped it
            raise SetupError("REST server stopped during start-up")
        if time.monotonic() > deadline:
            raise SetupError("REST server did not start in time")
        await asyncio.sleep(0.005)


def _grpc_server_options(options: ServerOptions) -> list[tuple[str, int | str]]:
    size = options.grpc_max_message_bytes
    args: list[tuple[str, int | str]] = [
        ("grpc.max_receive_message_length", size),
        ("grpc.max_send_message_length", size),
        ("grpc.so_reuseport", int(options.reuse_port)),
    ]
    for item in filter(None, options.grpc_channel_arguments.split(",")):
        key, sep, value = item.partition("=")
        if not sep:
            raise InvalidArgument(f"--grpc_channel_arguments: expected name=value, got {item!r}")
        args.append((key.strip(), int(value) if value.strip().lstrip("-").isdigit() else value))
    return args


def _grpc_host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def _listen(host: str, port: int, reuse_port: bool = False) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:  # workers share the port; the kernel spreads connections over them
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise SetupError(f"cannot listen for REST on {host}:{port}: {exc}") from exc
    sock.listen(2048)
    sock.setblocking(False)
    return sock


def _new_event_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


__all__ = ["DEFAULT_ADAPTERS", "INSTALLED_ADAPTERS", "Server", "ServerContext", "ServerOptions"]
