"""The Quix Streams peer of ``python -m benchmarks stream --workload avro --peers quix``.

Runs in the Quix peer's own virtual environment (``requirements.txt`` next to this file),
so it imports nothing from streamserve. What a Quix Streams user would write, following
Quix's Schema Registry page (``docs/advanced/schema-registry.md``): the topics'
serializers are Quix's own ``AvroDeserializer`` / ``AvroSerializer`` given a
``SchemaRegistryClientConfig`` (Confluent's serdes underneath: the writer schema fetched by
id and cached, the output schema registered under the output topic's subject on first use),
and the enrichment is a column assignment, ``sdf["fraud_score"] = sdf.apply(score)``:
one ONNX Runtime call per record, as StreamingDataFrame functions take one record.

A record is a transaction in the Confluent wire format (Avro, schema in the registry);
the output is the same record with ``fraud_score`` (double) added, keyed like the input,
written with the enriched schema from ``OUTPUT_SCHEMA.avsc`` (the input schema plus that
field, as a Quix user keeps the output schema next to the app).

    python avro_app.py BOOTSTRAP REGISTRY_URL INPUT OUTPUT GROUP MODEL_ONNX GUARANTEE \
        COMMIT_INTERVAL_MS OUTPUT_SCHEMA.avsc

Prints ``peer ready:`` before it starts consuming, ``peer first call at MS`` at the first
model call and ``peer model calls: N`` when it stops (SIGTERM/SIGINT stop Quix gracefully).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from quixstreams import Application
from quixstreams.models import SchemaRegistryClientConfig
from quixstreams.models.serializers.avro import AvroDeserializer, AvroSerializer

READY_PREFIX = "peer ready:"
SCORE_FIELD = "fraud_score"


def features(value: dict[str, Any]) -> list[float]:
    """The model's five inputs, in the order it was trained on."""
    return [
        value["amount"],
        value["hour_of_day"],
        value["customer_age"],
        value["distance_km"],
        value["merchant"]["risk"],
    ]


class FraudModel:
    """One ONNX Runtime session with the settings a per-record scorer wants: all graph
    optimisations, one intra-op thread and no spinning (a 5-feature model runs in
    microseconds; handing that to a thread pool costs more than it saves)."""

    def __init__(self, path: str) -> None:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(
            path, sess_options=options, providers=["CPUExecutionProvider"]
        )
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [self.session.get_outputs()[0].name]
        self.calls = 0

    def score(self, value: dict[str, Any]) -> float:
        if self.calls == 0:
            print(f"peer first call at {time.time() * 1000:.0f}", flush=True)
        self.calls += 1
        (scores,) = self.session.run(
            self.output_names, {self.input_name: np.array([features(value)], dtype=np.float32)}
        )
        return float(scores[0])


def main(argv: list[str]) -> int:
    if len(argv) != 9:
        print(__doc__, file=sys.stderr)
        return 2
    bootstrap, registry_url, input_topic, output_topic, group = argv[:5]
    model_path, guarantee, commit_ms, output_schema_path = argv[5:]
    model = FraudModel(model_path)
    output_schema = json.loads(Path(output_schema_path).read_text())
    registry = SchemaRegistryClientConfig(url=registry_url)
    app = Application(
        broker_address=bootstrap,
        consumer_group=group,
        auto_offset_reset="earliest",
        processing_guarantee="exactly-once" if guarantee == "exactly-once" else "at-least-once",
        commit_interval=float(commit_ms) / 1000,
        auto_create_topics=False,
    )
    source = app.topic(
        input_topic,
        key_deserializer="bytes",
        value_deserializer=AvroDeserializer(schema_registry_client_config=registry),
    )
    sink = app.topic(
        output_topic,
        key_serializer="bytes",
        value_serializer=AvroSerializer(
            schema=output_schema, schema_registry_client_config=registry
        ),
    )
    sdf = app.dataframe(source)

    # A plain function, not the bound method: Quix deep-copies the operations behind a
    # column assignment, and an ONNX Runtime session cannot be copied.
    def score(value: dict[str, Any]) -> float:
        return model.score(value)

    sdf[SCORE_FIELD] = sdf.apply(score)
    sdf.to_topic(sink)
    print(f"{READY_PREFIX} quix avro {guarantee}", flush=True)
    app.run()
    print(f"peer model calls: {model.calls}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
