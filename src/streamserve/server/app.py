"""The model server: one gRPC server and one HTTP server over one :class:`InferenceCore`.

``Server(ServerOptions(...))`` is usable three ways:

- from sync code (tests, the CLI): ``start()`` runs the server on its own event loop in
  a background thread and returns once both ports listen; ``stop()`` shuts it down
  gracefully; ``with Server(options) as server:`` does both;
- from async code: ``async with Server(options) as server:`` runs it on the caller's loop.

Ports: ``grpc_port=0`` / ``rest_port=0`` pick free ports (read them back from
``server.grpc_port`` / ``server.rest_port``); ``rest_port=None`` turns REST off. (The
CLI keeps TF Serving's meaning, where ``--rest_api_port=0`` turns REST off.)

Protocol adapters live in their own modules and plug themselves in: each module named
in ``ServerOptions.adapters`` that exists and defines ``install(context: ServerContext)``
is installed at start, in order. ``install`` registers gRPC servicers on
``context.grpc_server``, routes on ``context.rest_app`` (``add_route``), request
observers on ``context.core``, and cleanups in ``context.on_stop``.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from streamserve.errors import InvalidArgument, SetupError
from streamserve.repository import ConfigFilePoller, ModelConfig, ModelManager
from streamserve.repository.config import load_model_configs
from streamserve.server.core import InferenceCore, Runner, ThreadPoolRunner
from streamserve.server.http import App
from streamserve.server.http_limits import (
    DEFAULT_BODY_TIMEOUT_S,
    DEFAULT_HEADER_TIMEOUT_S,
    DEFAULT_MAX_HEADER_BYTES,
    DEFAULT_MAX_HEADERS,
    HttpLimits,
    guarded_protocol,
)
from streamserve.server.metrics import ServerMetrics

log = logging.getLogger(__name__)

MiB = 1024 * 1024
DEFAULT_ADAPTERS = (
    "streamserve.server.tfserving_grpc",
    "streamserve.server.tfserving_rest",
    "streamserve.server.v2_grpc",
    "streamserve.server.v2_rest",
    "streamserve.server.legacy_inception",
    "streamserve.server.metrics",
)
_START_TIMEOUT_SECONDS = 60.0


@dataclass
class ServerOptions:
    """Everything ``streamserve serve`` accepts; see :mod:`streamserve.server.cli`."""

    # models: an explicit list, or one model, or a TF Serving model config file
    models: list[ModelConfig] | None = None
    model_name: str = "default"
    model_base_path: str | Path | None = None
    model_platform: str = ""
    model_config_file: str | Path | None = None
    model_config_file_poll_wait_seconds: float = 0.0  # 0 = read once
    traffic_split_file: str | Path | None = None
    file_system_poll_wait_seconds: float = 1.0
    allow_version_labels_for_unavailable_models: bool = False
    enable_model_warmup: bool = True
    # network
    host: str = "0.0.0.0"
    grpc_port: int = 0  # 0 = pick a free port
    rest_port: int | None = 0  # 0 = pick a free port, None = no REST
    grpc_max_message_bytes: int = 64 * MiB
    grpc_channel_arguments: str = ""  # "name=value,name=value"
    rest_max_body_bytes: int = 64 * MiB
    rest_api_timeout_in_ms: int = 30_000  # 0 = no timeout
    # REST connection limits (see streamserve.server.http_limits); timeouts: 0 = none
    rest_api_header_timeout_seconds: float = DEFAULT_HEADER_TIMEOUT_S
    rest_api_body_timeout_seconds: float = DEFAULT_BODY_TIMEOUT_S
    rest_api_max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES
    rest_api_max_headers: int = DEFAULT_MAX_HEADERS
    # elements one request tensor may hold (a TF "fill" tensor expands one value to its
    # shape); 0 = derived: the largest message or body size / 4 (float32 elements)
    max_request_tensor_elements: int = 0
    # repository control over the network (see streamserve.server.model_control)
    model_control_mode: str = "none"  # "none": refused; "explicit": allowed
    model_repository_roots: tuple[str | Path, ...] = ()  # where loads may read from
    model_control_token_file: str | Path | None = None  # bearer token required if set
    # execution
    predict_threads: int = 0  # 0 = one per core (at least 2)
    enable_batching: bool = False
    batching_parameters_file: str | Path | None = None
    monitoring_config_file: str | Path | None = None
    adapters: tuple[str, ...] = DEFAULT_ADAPTERS
    grace_seconds: float = 5.0
    extra: dict[str, Any] = field(default_factory=dict)  # flags for adapters

    def request_tensor_element_limit(self) -> int:
        """``max_request_tensor_elements``, or when 0 the elements of float32 data that
        fit the largest gRPC message or REST body (16 Mi elements for 64 MiB)."""
        if self.max_request_tensor_elements > 0:
            return self.max_request_tensor_elements
        return max(self.grpc_max_message_bytes, self.rest_max_body_bytes) // 4

    def model_configs(self) -> list[ModelConfig]:
        if self.models is not None:
            return list(self.models)
        if self.model_config_file:
            return load_model_configs(self.model_config_file, self.traffic_split_file)
        if self.model_base_path:
            return [
                ModelConfig(
                    self.model_name, Path(self.model_base_path).absolute(), self.model_platform
                )
            ]
        raise InvalidArgument(
            "No models to serve: give --model_base_path (and --model_name) or --model_config_file"
        )


@dataclass
class ServerContext:
    """What an adapter's ``install`` gets."""

    options: ServerOptions
    manager: ModelManager
    core: InferenceCore
    grpc_server: grpc.aio.Server
    rest_app: App | None
    health: health.aio.HealthServicer
    on_stop: list[Callable[[], Awaitable[None] | None]] = field(default_factory=list)
    metrics: ServerMetrics | None = None


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
        metrics = ServerMetrics()
        manager = await self._start_manager(stack, metrics)
        core = InferenceCore(manager, self._runner or ThreadPoolRunner(options.predict_threads))
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
        _install_adapters(context)
        stack.push_async_callback(_run_cleanups, context.on_stop)
        await self._start_grpc(stack, context)
        if rest_app is not None:
            await self._start_rest(stack, rest_app)
        self._start_config_poller(stack, manager)
        await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        stack.push_async_callback(health_servicer.enter_graceful_shutdown)

    async def _start_manager(
        self, stack: contextlib.AsyncExitStack, metrics: ServerMetrics
    ) -> ModelManager:
        if self._given_manager is not None:
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
        )
        metrics.follow(manager)  # before start: the initial loads' latency is recorded too
        await asyncio.to_thread(manager.start)
        stack.push_async_callback(asyncio.to_thread, manager.stop)
        return manager

    async def _start_grpc(self, stack: contextlib.AsyncExitStack, context: ServerContext) -> None:
        address = f"{_grpc_host(self.options.host)}:{self.options.grpc_port}"
        try:
            port = context.grpc_server.add_insecure_port(address)
        except RuntimeError as exc:
            raise SetupError(f"cannot listen for gRPC on {address}: {exc}") from exc
        if port == 0:
            raise SetupError(f"cannot listen for gRPC on {address}")
        await context.grpc_server.start()
        self.grpc_port = port
        stack.push_async_callback(context.grpc_server.stop, self.options.grace_seconds)

    async def _start_rest(self, stack: contextlib.AsyncExitStack, app: App) -> None:
        import uvicorn

        sock = _listen(self.options.host, self.options.rest_port or 0)
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


def _install_adapters(context: ServerContext) -> None:
    for module_name in context.options.adapters:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            log.debug("adapter %s not present", module_name)
            continue
        install = getattr(module, "install", None)
        if install is None:
            log.debug("adapter %s has no install()", module_name)
            continue
        install(context)


async def _run_cleanups(cleanups: list[Callable[[], Awaitable[None] | None]]) -> None:
    for cleanup in reversed(cleanups):
        try:
            result = cleanup()
            if result is not None:
                await result
        except Exception:
            log.exception("adapter cleanup failed")


async def _wait_started(server: Any, task: asyncio.Task[None]) -> None:
    deadline = time.monotonic() + _START_TIMEOUT_SECONDS
    while not server.started:
        if task.done():
            task.result()  # raises what stopped it
            raise SetupError("REST server stopped during start-up")
        if time.monotonic() > deadline:
            raise SetupError("REST server did not start in time")
        await asyncio.sleep(0.005)


def _grpc_server_options(options: ServerOptions) -> list[tuple[str, Any]]:
    size = options.grpc_max_message_bytes
    args: list[tuple[str, Any]] = [
        ("grpc.max_receive_message_length", size),
        ("grpc.max_send_message_length", size),
        ("grpc.so_reuseport", 0),
    ]
    for item in filter(None, options.grpc_channel_arguments.split(",")):
        key, sep, value = item.partition("=")
        if not sep:
            raise InvalidArgument(f"--grpc_channel_arguments: expected name=value, got {item!r}")
        args.append((key.strip(), int(value) if value.strip().lstrip("-").isdigit() else value))
    return args


def _grpc_host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
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


__all__ = ["DEFAULT_ADAPTERS", "Server", "ServerContext", "ServerOptions"]
