"""The one entry point: ``streamserve serve | stream | kafka | models | demo``.

Each subcommand lives in its own module exposing ``HELP``, ``configure(parser)``
and ``run(args) -> int``. Those modules keep their top-level imports light and
import heavy libraries inside ``run`` so that ``--help`` stays fast.

``--log-level`` is accepted before or after the subcommand.

Exit statuses are one table, :mod:`streamserve.exit_codes` (0 success, 2 a usage or
configuration error on one ``error:`` line, 5 cannot connect to Kafka, ...). With
``--log-format json`` the ``error:`` line is a JSON object too.
"""

from __future__ import annotations

import argparse
import sys
from types import ModuleType

from streamserve import __version__, demo
from streamserve.errors import KafkaConnectError, MissingExtra, ModelLoadFailed, StreamserveError
from streamserve.exit_codes import ExitCode
from streamserve.kafka import cli as kafka_cli
from streamserve.logs import LOG_LEVELS, configure_logging, print_error_line
from streamserve.models import cli as models_cli
from streamserve.server import cli as server_cli
from streamserve.stream import cli as stream_cli

EXIT_ERROR = ExitCode.ERROR
EXIT_MISSING_EXTRA = ExitCode.MISSING_EXTRA
EXIT_KAFKA_CONNECT = ExitCode.KAFKA_CONNECT
EXIT_MODEL_LOAD_FAILED = ExitCode.MODEL_LOAD_FAILED
EXIT_INTERRUPTED = ExitCode.INTERRUPTED


COMMANDS: dict[str, ModuleType] = {
    "serve": server_cli,
    "stream": stream_cli,
    "kafka": kafka_cli,
    "models": models_cli,
    "demo": demo,
}


def _add_log_level(parser: argparse.ArgumentParser, default: str | None) -> None:
    parser.add_argument(
        "--log-level",
        type=str.upper,
        choices=LOG_LEVELS,
        # after the subcommand: only a given value may override the one before it
        default=default if default is not None else argparse.SUPPRESS,
        help="log level (default INFO)",
    )


def _add_log_level_to_subcommands(parser: argparse.ArgumentParser) -> None:
    """Accept ``--log-level`` after the subcommand, at every level (``models build``)."""
    _add_log_level(parser, None)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for nested in action.choices.values():
                _add_log_level_to_subcommands(nested)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="streamserve", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"streamserve {__version__}")
    _add_log_level(parser, None)  # absent means INFO (or a stream --config file's level)
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name, module in COMMANDS.items():
        sub = subparsers.add_parser(name, help=module.HELP, description=module.HELP)
        module.configure(sub)
        _add_log_level_to_subcommands(sub)
        sub.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    log_format = getattr(args, "log_format", "text")
    configure_logging(getattr(args, "log_level", "INFO"), log_format)
    try:
        return int(args._run(args) or 0)
    except StreamserveError as exc:
        # a subcommand may have changed the format (stream's --config file)
        print_error_line(exc.message, getattr(args, "log_format", log_format))
        return _exit_status(exc)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


def _exit_status(exc: StreamserveError) -> int:
    if isinstance(exc, MissingExtra):
        return EXIT_MISSING_EXTRA
    if isinstance(exc, KafkaConnectError):
        return EXIT_KAFKA_CONNECT
    if isinstance(exc, ModelLoadFailed):
        return EXIT_MODEL_LOAD_FAILED
    return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
