"""The Quix Streams peer of ``python -m benchmarks stream --peers quix``.

Runs in its own virtual environment (``requirements.txt`` next to this file; the benchmark
creates it), so it imports nothing from streamserve. What a Quix Streams user would write:
``sdf.apply(predict)`` with one ONNX Runtime call per record, JSON in and out.

A record is TF Serving columnar JSON ``{"id": i, "inputs": {"x": [[...]]}}``; the output
is ``{"id": i, "outputs": {"y": [[...]]}}``, keyed like the input.

    python app.py BOOTSTRAP INPUT OUTPUT GROUP MODEL_ONNX GUARANTEE COMMIT_INTERVAL_MS

Prints ``peer ready:`` before it starts consuming, ``peer first call at MS`` at the first
model call and ``peer model calls: N`` when it stops (SIGTERM/SIGINT stop Quix gracefully).
"""

from __future__ import annotations

import sys
import time
from typing import Any

import numpy as np
import onnxruntime as ort
from quixstreams import Application

READY_PREFIX = "peer ready:"


class Model:
    """One ONNX Runtime session with streamserve's embedded session settings."""

    def __init__(self, path: str) -> None:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(
            path, sess_options=options, providers=["CPUExecutionProvider"]
        )
        self.output_names = [output.name for output in self.session.get_outputs()]
        self.calls = 0

    def __call__(self, value: dict[str, Any]) -> dict[str, Any]:
        feeds = {name: np.asarray(rows, dtype=np.float32) for name, rows in value["inputs"].items()}
        if self.calls == 0:
            print(f"peer first call at {time.time() * 1000:.0f}", flush=True)
        self.calls += 1
        results = self.session.run(self.output_names, feeds)
        outputs = {
            name: array.tolist() for name, array in zip(self.output_names, results, strict=True)
        }
        return {"id": value.get("id"), "outputs": outputs}


def main(argv: list[str]) -> int:
    if len(argv) != 7:
        print(__doc__, file=sys.stderr)
        return 2
    bootstrap, input_topic, output_topic, group, model_path, guarantee, commit_ms = argv
    model = Model(model_path)
    app = Application(
        broker_address=bootstrap,
        consumer_group=group,
        auto_offset_reset="earliest",
        processing_guarantee="exactly-once" if guarantee == "exactly-once" else "at-least-once",
        commit_interval=float(commit_ms) / 1000,
        auto_create_topics=False,
    )
    source = app.topic(input_topic, key_deserializer="bytes", value_deserializer="json")
    sink = app.topic(output_topic, key_serializer="bytes", value_serializer="json")
    sdf = app.dataframe(source)
    sdf = sdf.apply(model)
    sdf.to_topic(sink)
    print(f"{READY_PREFIX} quix {guarantee}", flush=True)
    app.run()
    print(f"peer model calls: {model.calls}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
