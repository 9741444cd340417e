"""What the server hands its protocol adapters: :class:`ServerOptions`, the typed
:class:`ServerContext` and the :class:`Adapter` protocol they implement."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import grpc
from grpc_health.v1 import health

from streamserve.errors import InvalidArgument
from streamserve.repository import ModelConfig, ModelManager
from streamserve.repository.config import load_model_configs
from streamserve.runtimes.base import LoadOptions
from streamserve.runtimes.providers import parse_providers
from streamserve.server.core import InferenceCore
from streamserve.server.http import App
from streamserve.server.http_limits import (
    DEFAULT_BODY_TIMEOUT_S,
    DEFAULT_HEADER_TIMEOUT_S,
    DEFAULT_MAX_HEADER_BYTES,
    DEFAULT_MAX_HEADERS,
)
from streamserve.server.metrics import ServerMetrics

MiB = 1024 * 1024
METRICS_ADAPTER = "metrics"
ACCESS_LOG_ADAPTER = "access_log"
DEFAULT_ADAPTERS = (
    "tfserving_grpc",
    "tfserving_rest",
    "v2_grpc",
    "v2_rest",
    "legacy_inception",
    METRICS_ADAPTER,
    ACCESS_LOG_ADAPTER,
)

Cleanup = Callable[[], Awaitable[None] | None]


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
    # start-up: refuse to serve unless every initial model has a version AVAILABLE
    allow_partial_start: bool = False
    # network
    host: str = "0.0.0.0"
    ssl_config_file: str | Path | None = None  # TF Serving SSLConfig: TLS on both ports
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
    # ONNX Runtime: providers in order of preference (() = CPU) and session threads
    # (0 = ORT decides); a model's streamserve.json overrides them
    onnx_execution_providers: tuple[str, ...] = ()
    intra_op_parallelism: int = 0
    inter_op_parallelism: int = 0
    enable_batching: bool = False
    batching_parameters_file: str | Path | None = None
    monitoring_config_file: str | Path | None = None
    # names of installed adapters (streamserve.server.app.INSTALLED_ADAPTERS), in order
    adapters: tuple[str, ...] = DEFAULT_ADAPTERS
    access_log: bool = False  # one log line per request (the access_log adapter)
    grace_seconds: float = 5.0
    # share both ports with other processes (SO_REUSEPORT): set for ``serve --workers N``
    reuse_port: bool = False
    extra: dict[str, object] = field(default_factory=dict)  # flags for adapters

    @property
    def metrics_enabled(self) -> bool:
        return METRICS_ADAPTER in self.adapters

    def request_tensor_element_limit(self) -> int:
        """``max_request_tensor_elements``, or when 0 the elements of float32 data that
        fit the largest gRPC message or REST body (16 Mi elements for 64 MiB)."""
        if self.max_request_tensor_elements > 0:
            return self.max_request_tensor_elements
        return max(self.grpc_max_message_bytes, self.rest_max_body_bytes) // 4

    def load_options(self) -> LoadOptions:
        """What every runtime gets when loading a version (providers, threads)."""
        return LoadOptions(
            intra_op_threads=self.intra_op_parallelism,
            inter_op_threads=self.inter_op_parallelism,
            execution_providers=parse_providers(self.onnx_execution_providers),
        )

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
    """What an adapter's ``install`` gets: it registers gRPC servicers on
    ``grpc_server``, routes on ``rest_app`` (None when REST is off), request observers
    on ``core``, and cleanups in ``on_stop`` (run in reverse order at stop). gRPC adapters
    add the full names of the services they register to ``grpc_services`` (reflection)."""

    options: ServerOptions
    manager: ModelManager
    core: InferenceCore
    grpc_server: grpc.aio.Server
    rest_app: App | None
    health: health.aio.HealthServicer
    metrics: ServerMetrics | None = None  # None when the metrics adapter is not configured
    grpc_services: list[str] = field(default_factory=list)  # full names, for reflection
    on_stop: list[Cleanup] = field(default_factory=list)


class Adapter(Protocol):
    """A protocol adapter: a module (or object) with an ``install`` function."""

    def install(self, context: ServerContext) -> None: ...


__all__ = [
    "ACCESS_LOG_ADAPTER",
    "DEFAULT_ADAPTERS",
    "METRICS_ADAPTER",
    "Adapter",
    "Cleanup",
    "ServerContext",
    "ServerOptions",
]
