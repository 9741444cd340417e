"""The one entry point: ``streamserve serve | stream | kafka | models | demo``.

Each subcommand lives in its own module exposing ``HELP``, ``configure(parser)``
and ``run(args) -> int``. Those modules keep their top-level imports light and
import heavy libraries inside ``run`` so that ``--help`` stays fast.

``--log-level`` is accepted before or after the subcommand.

Exit status: 0 success; 1 the command ran but did not succeed (e.g. an incomplete
demo); 2 a usage, configuration or set-up error, explained on one ``error:`` line;
3 ``kafka status``: the broker is not running; 4 an optional extra is missing (the
``error:`` line says which ``pip install 'streamserve[...]'``); 6 a model the command
was started with cannot load (``serve``'s initial models, embedded ``stream``'s model;
the ``error:`` line quotes the load error); 130 interrupted.
"""

from __future__ import annotations

import argparse
import sys
from types import ModuleType

from streamserve import __version__, demo
from streamserve.errors import MissingExtra, ModelLoadFailed, StreamserveError
from streamserve.kafka import cli as kafka_cli
from streamserve.logs import LOG_LEVELS, configure_logging
from streamserve.models import cli as models_cli
from streamserve.server import cli as server_cli
from streamserve.stream import cli as stream_cli

EXIT_ERROR = 2
EXIT_MISSING_EXTRA = 4
EXIT_MODEL_LOAD_FAILED = 6
EXIT_INTERRUPTED = 130


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
    _add_log_level(parser, "INFO")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name, module in COMMANDS.items():
        sub = subparsers.add_parser(name, help=module.HELP, description=module.HELP)
        module.configure(sub)
        _add_log_level_to_subcommands(sub)
        sub.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.log_level, getattr(args, "log_format", "text"))
    try:
        return int(args._run(args) or 0)
    except MissingExtra as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return EXIT_MISSING_EXTRA
    except ModelLoadFailed as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return EXIT_MODEL_LOAD_FAILED
    except StreamserveError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
