"""streamserve's benchmarks: development tooling, run from a source checkout.

    python -m benchmarks server ...   # the model server against MLServer and a minimal grpc.aio
    python -m benchmarks stream ...   # the stream processor, embedded vs remote inference

They are not part of the installed ``streamserve`` package: they need the peer servers
kept next to them (``mlserver/``, ``minimal_grpc/``), which a wheel does not carry.
"""

from pathlib import Path

BENCHMARKS_DIR = Path(__file__).resolve().parent
"""This folder: the peers' files (``mlserver/``, ``minimal_grpc/``) live here."""
