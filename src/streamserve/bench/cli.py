"""``streamserve bench server ...`` and ``streamserve bench stream ...``.

Each benchmark module exposes ``configure(parser)`` and ``run(args) -> int`` like the
other subcommands; they are imported when their subcommand runs (``stream`` lazily,
since it may not exist yet in every checkout), so ``streamserve --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib

HELP = "Benchmarks: the model server (server) and the stream processor (stream)"
BENCHMARKS: dict[str, tuple[str, str]] = {
    "server": ("streamserve.bench.server", "model server vs raw onnxruntime, MLServer, grpc.aio"),
    "stream": ("streamserve.bench.stream", "stream processor throughput and latency"),
}


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="bench_command", required=True)
    for name, (module_name, help_text) in BENCHMARKS.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            continue  # benchmark not built in this checkout
        child = sub.add_parser(name, help=getattr(module, "HELP", help_text),
                               description=getattr(module, "HELP", help_text))  # fmt: skip
        module.configure(child)
        child.set_defaults(_bench_run=module.run)


def run(args: argparse.Namespace) -> int:
    return int(args._bench_run(args) or 0)
