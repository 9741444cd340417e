"""``python -m benchmarks server ...`` and ``python -m benchmarks stream ...``, from a checkout.

Each benchmark module exposes ``HELP``, ``configure(parser)`` and ``run(args) -> int``
like streamserve's subcommands.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from streamserve.errors import StreamserveError

BENCHMARKS: dict[str, str] = {
    "server": "benchmarks.server",
    "stream": "benchmarks.stream",
    "profile": "benchmarks.profile",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Benchmarks: the model server (server) and the stream processor (stream)",
    )
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ERROR")
    sub = parser.add_subparsers(dest="benchmark", required=True)
    for name, module_name in BENCHMARKS.items():
        module = importlib.import_module(module_name)
        child = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.configure(child)
        child.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args._run(args) or 0)
    except StreamserveError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
