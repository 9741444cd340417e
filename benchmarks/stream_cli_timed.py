"""``python -m benchmarks.stream_cli_timed ARGS``: ``streamserve stream ARGS``, model calls counted.

The CLI exactly as a user runs it (its flags, settings and assembly), with one change made
before it starts: the embedded predictor's ``predict`` is wrapped to print the first
model call's wall-clock time, as the peer apps do (``peer first call at MS``: where a
drain's records/s span starts), and, when the CLI returns, the number of model calls and
rows (``peer model calls: N``, ``peer model rows: N``). The wrapper costs one Python call
per model call (a batch of records), as the benchmark worker's timed predictor does.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

FIRST_CALL_LINE = "peer first call at"
CALLS_LINE = "peer model calls:"
ROWS_LINE = "peer model rows:"


def instrument() -> dict[str, int]:
    """Wrap :meth:`EmbeddedPredictor.predict`; the returned counters fill as it runs."""
    from streamserve.predictors.embedded import EmbeddedPredictor

    counters = {"calls": 0, "rows": 0}
    original = EmbeddedPredictor.predict

    async def predict(
        self: EmbeddedPredictor,
        inputs: Mapping[str, np.ndarray],
        signature_name: str | None = None,
    ) -> Any:
        if counters["calls"] == 0:
            print(f"{FIRST_CALL_LINE} {time.time() * 1000:.0f}", flush=True)
        counters["calls"] += 1
        counters["rows"] += int(next(iter(inputs.values())).shape[0]) if inputs else 0
        return await original(self, inputs, signature_name)

    EmbeddedPredictor.predict = predict  # type: ignore[method-assign]
    return counters


def main(argv: list[str] | None = None) -> int:
    from streamserve.cli import main as streamserve_main

    counters = instrument()
    try:
        return streamserve_main(["stream", *(sys.argv[1:] if argv is None else argv)])
    finally:
        print(f"{CALLS_LINE} {counters['calls']}", flush=True)
        print(f"{ROWS_LINE} {counters['rows']}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
