"""``streamserve serve``: a drop-in for ``tensorflow_model_server``'s command line.

Flags keep TF Serving's names and meanings, in ``--snake_case`` or ``--dash-case``,
as ``--flag=value`` or ``--flag value``; boolean flags accept ``--flag``,
``--flag=true`` and ``--flag=false``. ``MODEL_NAME`` and ``MODEL_BASE_PATH`` are read
from the environment like TF Serving's Docker image does. Differences: the REST port
defaults to 8501 (TF Serving's binary defaults to 0 = off, its Docker image passes
8501); ``--rest_api_port=0`` turns REST off as in TF Serving; ``--port=0`` picks a free
gRPC port (printed on the readiness line); network model control (V2 load/unload,
``HandleReloadConfigRequest``) is off unless ``--model_control_mode=explicit`` (see
:mod:`streamserve.server.model_control`).

Once both servers listen, one line is printed to stdout::

    streamserve: serving gRPC on 0.0.0.0:8500, REST on 0.0.0.0:8501

Start-up fails fast, as TF Serving's does: when a model given at start-up has no version
AVAILABLE after its first load attempt, ``serve`` exits with status 6 and the load error
on its ``error:`` line (``--allow_partial_start`` serves anyway; ``grpc.health.v1`` and
``/v2/health/ready`` then say not serving until every model is AVAILABLE).

SIGTERM or SIGINT stops the server gracefully (requests in flight finish).

``--workers N`` runs N server processes sharing both ports under one supervisor (see
:mod:`streamserve.server.workers`); the line above is printed once all of them serve.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from typing import TYPE_CHECKING, Any

from streamserve.logs import add_log_format_argument

if TYPE_CHECKING:
    from streamserve.server.context import ServerOptions

SERVER_READY_PREFIX = "streamserve: serving gRPC on "
"""Start of the line ``serve`` prints once it serves; child-process wrappers wait for it."""

HELP = "Run the model server (TensorFlow Serving gRPC/REST and KServe V2 APIs)"
MiB = 1024 * 1024

# TF Serving flags accepted for compatibility that have no effect here.
_IGNORED_FLAGS = (
    "tensorflow_session_parallelism",
    "per_process_gpu_memory_fraction",
    "saved_model_tags",
    "rest_api_num_threads",
    "enable_signature_method_name_check",
    "xla_cpu_compilation_enabled",
    "num_load_threads",
    "num_unload_threads",
    "max_num_load_retries",
    "load_retry_interval_micros",
)


def parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "t", "yes", "y", "on"):
        return True
    if value in ("0", "false", "f", "no", "n", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _flag(parser: argparse.ArgumentParser, name: str, **kwargs: Any) -> None:
    """Register ``--name`` and, when it has underscores, ``--dash-name`` too."""
    spellings = [f"--{name}"]
    if "_" in name:
        spellings.append(f"--{name.replace('_', '-')}")
    parser.add_argument(*spellings, dest=name, **kwargs)


def _bool_flag(parser: argparse.ArgumentParser, name: str, default: bool, help: str) -> None:
    _flag(parser, name, type=parse_bool, nargs="?", const=True, default=default, help=help)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def configure(parser: argparse.ArgumentParser) -> None:
    _flag(parser, "port", type=int, default=8500, help="gRPC port (0 = pick a free one)")
    _flag(parser, "rest_api_port", type=int, default=8501, help="HTTP/REST port (0 = no REST)")
    _flag(parser, "host", default="0.0.0.0",
          help="address both servers listen on (0.0.0.0: all interfaces, as TF Serving; "
          "127.0.0.1: this machine only)")  # fmt: skip
    _flag(parser, "model_name", default=os.environ.get("MODEL_NAME", "default"),
          help="name of the single model (env MODEL_NAME)")  # fmt: skip
    _flag(parser, "model_base_path", default=os.environ.get("MODEL_BASE_PATH"),
          help="<version>/ dirs of model.py, model.onnx, saved_model.pb or model.joblib "
          "(env MODEL_BASE_PATH)")  # fmt: skip
    _flag(parser, "model_platform", default="", help="platform of the single model")
    _bool_flag(parser, "allow_partial_start", False,
               "serve even when an initial model fails to load (health says NOT_SERVING "
               "until every model is AVAILABLE); default: exit with the load error")  # fmt: skip
    _flag(parser, "ssl_config_file",
          help="TF Serving SSLConfig text proto (server_key, server_cert, custom_ca, "
          "client_verify): TLS on the gRPC port and HTTPS on the REST port")  # fmt: skip
    _flag(parser, "model_config_file", help="TF Serving model_config_list text proto")
    _flag(parser, "model_config_file_poll_wait_seconds", type=float, default=0.0,
          help="re-read --model_config_file every N seconds (0 = once)")  # fmt: skip
    _flag(parser, "traffic_split_file", help="JSON A/B traffic splits per model")
    _flag(parser, "file_system_poll_wait_seconds", type=float, default=1.0,
          help="how often base paths are scanned for new versions")  # fmt: skip
    _bool_flag(parser, "allow_version_labels_for_unavailable_models", False,
               "labels may point at versions that are not loaded yet")  # fmt: skip
    _bool_flag(parser, "enable_model_warmup", True, "run warm-up requests after loading")
    _bool_flag(parser, "enable_batching", False, "dynamic batching of concurrent requests")
    _flag(parser, "batching_parameters_file", help="TF Serving BatchingParameters text proto")
    _flag(parser, "monitoring_config_file", help="TF Serving MonitoringConfig text proto")
    _flag(parser, "rest_api_timeout_in_ms", type=int, default=30_000,
          help="REST request timeout (0 = none)")  # fmt: skip
    _flag(parser, "rest_api_max_body_bytes", type=int, default=64 * MiB,
          help="largest REST request body (413 above)")  # fmt: skip
    _flag(parser, "rest_api_header_timeout_seconds", type=float, default=10.0,
          help="a request's line and headers must arrive within this (408; 0 = none)")  # fmt: skip
    _flag(parser, "rest_api_body_timeout_seconds", type=float, default=60.0,
          help="a request's body must arrive within this after its headers (408)")  # fmt: skip
    _flag(parser, "rest_api_max_header_bytes", type=int, default=32 * 1024,
          help="largest REST request line + headers (431 above)")  # fmt: skip
    _flag(parser, "rest_api_max_headers", type=int, default=100,
          help="most header fields in a REST request (431 above)")  # fmt: skip
    _flag(parser, "grpc_max_message_bytes", type=int, default=64 * MiB,
          help="largest gRPC message (RESOURCE_EXHAUSTED above)")  # fmt: skip
    _flag(parser, "max_request_tensor_elements", type=int, default=0,
          help="most elements a request tensor may hold or expand to (RESOURCE_EXHAUSTED "
          "above; 0 = largest message size / 4)")  # fmt: skip
    _flag(parser, "grpc_channel_arguments", default="", help="name=value,... gRPC server args")
    _flag(parser, "predict_threads", type=int, default=0, help="model threads (0 = cores)")
    _flag(parser, "onnx_execution_providers", default="",
          help="ONNX Runtime providers in order, e.g. CUDAExecutionProvider,CPUExecutionProvider "
          "(unavailable ones fall back to CPU with a warning; default CPU)")  # fmt: skip
    _flag(parser, "tensorflow_intra_op_parallelism", type=int, default=0,
          help="ONNX Runtime intra-op threads per session (0 = runtime default)")  # fmt: skip
    _flag(parser, "tensorflow_inter_op_parallelism", type=int, default=0,
          help="ONNX Runtime inter-op threads per session (0 = runtime default)")  # fmt: skip
    _flag(parser, "workers", type=_positive_int, default=1,
          help="server processes sharing both ports (SO_REUSEPORT), for all cores")  # fmt: skip
    add_log_format_argument(parser)
    _bool_flag(parser, "access_log", False,
               "log one line per request: model, version, protocol, status, latency")  # fmt: skip
    _flag(parser, "model_control_mode", choices=["none", "explicit"], default="none",
          help="none (default): refuse load/unload/reload; explicit: allow them")  # fmt: skip
    _flag(parser, "model_repository_root", action="append", default=[],
          help="explicit mode: load models only from below DIR (repeatable)")  # fmt: skip
    _flag(parser, "model_control_token_file",
          help="explicit mode: require 'Authorization: Bearer <file content>'")  # fmt: skip
    for name in _IGNORED_FLAGS:
        _flag(parser, name, default=None, help=argparse.SUPPRESS)


def options_from_args(args: argparse.Namespace) -> ServerOptions:
    from streamserve.server.context import ServerOptions

    for name in _IGNORED_FLAGS:
        if getattr(args, name, None) is not None:
            print(f"streamserve: --{name} has no effect here; ignored", file=sys.stderr)
    return ServerOptions(
        model_name=args.model_name,
        model_base_path=args.model_base_path,
        model_platform=args.model_platform,
        model_config_file=args.model_config_file,
        model_config_file_poll_wait_seconds=args.model_config_file_poll_wait_seconds,
        traffic_split_file=args.traffic_split_file,
        file_system_poll_wait_seconds=args.file_system_poll_wait_seconds,
        allow_version_labels_for_unavailable_models=args.allow_version_labels_for_unavailable_models,
        enable_model_warmup=args.enable_model_warmup,
        allow_partial_start=args.allow_partial_start,
        host=args.host,
        ssl_config_file=args.ssl_config_file,
        grpc_port=args.port,
        rest_port=args.rest_api_port or None,
        grpc_max_message_bytes=args.grpc_max_message_bytes,
        grpc_channel_arguments=args.grpc_channel_arguments,
        rest_max_body_bytes=args.rest_api_max_body_bytes,
        rest_api_timeout_in_ms=args.rest_api_timeout_in_ms,
        rest_api_header_timeout_seconds=args.rest_api_header_timeout_seconds,
        rest_api_body_timeout_seconds=args.rest_api_body_timeout_seconds,
        rest_api_max_header_bytes=args.rest_api_max_header_bytes,
        rest_api_max_headers=args.rest_api_max_headers,
        predict_threads=args.predict_threads,
        onnx_execution_providers=tuple(p for p in args.onnx_execution_providers.split(",") if p),
        intra_op_parallelism=args.tensorflow_intra_op_parallelism,
        inter_op_parallelism=args.tensorflow_inter_op_parallelism,
        enable_batching=args.enable_batching,
        batching_parameters_file=args.batching_parameters_file,
        monitoring_config_file=args.monitoring_config_file,
        max_request_tensor_elements=args.max_request_tensor_elements,
        model_control_mode=args.model_control_mode,
        model_repository_roots=tuple(args.model_repository_root),
        model_control_token_file=args.model_control_token_file,
        access_log=args.access_log,
    )


def ready_line(host: str, grpc_port: int, rest_port: int | None) -> str:
    rest = f"REST on {host}:{rest_port}" if rest_port else "REST off"
    return f"{SERVER_READY_PREFIX}{host}:{grpc_port}, {rest}"


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    return stop


def run(args: argparse.Namespace) -> int:
    if args.workers > 1:
        return _run_workers(args)
    from streamserve.server.app import Server

    server = Server(options_from_args(args))
    stop = _stop_on_signals()
    server.start()
    try:
        print(ready_line(args.host, server.grpc_port, server.rest_port), flush=True)
        stop.wait()
        print("streamserve: shutting down", file=sys.stderr, flush=True)
    finally:
        server.stop()
    return 0


def _run_workers(args: argparse.Namespace) -> int:
    from streamserve.server.workers import serve_workers

    options = options_from_args(args)
    options.model_configs()  # a configuration error stops here, once, not in every worker
    stop = _stop_on_signals()

    def announce(grpc_port: int, rest_port: int | None) -> None:
        print(ready_line(args.host, grpc_port, rest_port), flush=True)

    log_level = getattr(args, "log_level", None) or "INFO"  # as streamserve.cli.main
    serve_workers(options, args.workers, stop, announce,
                  log_level=log_level, log_format=args.log_format)  # fmt: skip
    print("streamserve: stopped", file=sys.stderr, flush=True)
    return 0
