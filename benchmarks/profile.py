"""``python -m benchmarks profile``: where one streamserve worker spends its time under load.

Starts ``streamserve serve`` on the benchmark's tiny model, loads it with h2load (V2
``ModelInfer`` or TF ``Predict``, 16 closed-loop streams), samples it with py-spy
(``--gil``: only the thread holding the GIL, i.e. the event loop's Python and C work) and
prints the functions with the most own time and the most inclusive time. Needs ``h2load``
and ``py-spy`` on PATH; the raw stacks are kept in ``--out``.
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
from pathlib import Path

from streamserve.errors import SetupError

HELP = "Profile one streamserve worker under h2load with py-spy (top own-time functions)"
OWN_ROWS = 25
INCLUSIVE_ROWS = 25


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--protocol", choices=("v2", "tf"), default="v2")
    parser.add_argument("--batch", type=int, default=1, help="rows per request")
    parser.add_argument("--duration", type=int, default=8, help="seconds sampled")
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--out", type=Path, default=Path("bench-results/profile"))
    parser.add_argument("--models-dir", type=Path,
                        default=Path("~/.cache/streamserve/bench-models").expanduser())  # fmt: skip


def run(args: argparse.Namespace) -> int:
    from benchmarks.loadtools import grpc_frame
    from benchmarks.server import GRPC_METHODS, TINY, tf_grpc_request, tiny_inputs, v2_grpc_request
    from benchmarks.targets import start_streamserve
    from streamserve.models.cli import build_model

    for tool in ("h2load", "py-spy"):
        if shutil.which(tool) is None:
            raise SetupError(f"{tool} is not installed")
    args.out.mkdir(parents=True, exist_ok=True)
    model_dir = build_model(TINY, args.models_dir / TINY)
    inputs = {"x": tiny_inputs(args.batch)}
    build = v2_grpc_request if args.protocol == "v2" else tf_grpc_request
    body = args.out / "body.bin"
    body.write_bytes(grpc_frame(build(TINY, inputs)))
    raw = args.out / f"{args.protocol}-b{args.batch}.raw"
    server = start_streamserve("streamserve", TINY, model_dir.parent, args.out)
    try:
        url = f"http://{server.grpc_target}{GRPC_METHODS[args.protocol]}"
        load = ["h2load", "-c", "16", "-m", "1", "-t", "1", "-H", "content-type: application/grpc",
                "-H", "te: trailers", "-d", str(body)]  # fmt: skip
        subprocess.run([*load, "-D", "2", url], capture_output=True, check=False)  # warm-up
        spy = subprocess.Popen(["py-spy", "record", "--gil", "-r", str(args.rate), "-d",
                                str(args.duration), "-f", "raw", "-o", str(raw), "-p",
                                str(server.pid)], stdout=subprocess.DEVNULL)  # fmt: skip
        done = subprocess.run([*load, "-D", str(args.duration), url], capture_output=True,
                              text=True, check=False)  # fmt: skip
        spy.wait()
    finally:
        server.stop()
    print(next((line for line in done.stdout.splitlines() if "req/s" in line), "no h2load summary"))
    print(format_profile(raw.read_text()))
    return 0


def format_profile(text: str) -> str:
    """Top own-time and inclusive-time functions of py-spy's raw (collapsed) stacks."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = [_function(frame) for frame in stack.split(";")]
        total += int(count)
        own[frames[-1]] += int(count)
        for frame in set(frames):
            inclusive[frame] += int(count)
    lines = [f"{total} samples holding the GIL", "own time:"]
    lines += [f"{100 * n / total:6.1f}%  {name}" for name, n in own.most_common(OWN_ROWS)]
    lines.append("inclusive time:")
    lines += [
        f"{100 * n / total:6.1f}%  {name}" for name, n in inclusive.most_common(INCLUSIVE_ROWS)
    ]
    return "\n".join(lines)


def _function(frame: str) -> str:
    """``name (path/file.py:line)`` → ``name (file.py)``: lines of one function merged."""
    name, _, where = frame.partition(" (")
    return f"{name} ({where.rsplit('/', 1)[-1].split(':')[0]})" if where else name
