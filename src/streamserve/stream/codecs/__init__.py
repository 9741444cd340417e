"""Record codecs: how Kafka record bytes become model inputs and outputs become records.

One module per concern: :mod:`~streamserve.stream.codecs.base` (the protocol the
processor sees, and its batch helpers), one module per record format (tensor JSON,
images, plain functions, JSON events, Avro, Protobuf, JSON Schema), the feature mapping
(record fields → model inputs) and the prediction fields (model outputs → record fields).
"""

from __future__ import annotations

from streamserve.stream.codecs.base import (
    DecodedRecord,
    Encoded,
    InputRecord,
    OutputRecord,
    RecordCodec,
    SameKey,
    StackedBatch,
    batch_decoder,
    batch_encoder,
    batch_preparer,
    declared_output_topics,
    dumps,
    encode_each,
    parse_json_object,
    stacked_decoder,
)
from streamserve.stream.codecs.functions import CallableCodec
from streamserve.stream.codecs.image import ImageCodec, classic_format
from streamserve.stream.codecs.tensor import TensorJsonCodec

__all__ = [
    "CallableCodec",
    "DecodedRecord",
    "Encoded",
    "ImageCodec",
    "InputRecord",
    "OutputRecord",
    "RecordCodec",
    "SameKey",
    "StackedBatch",
    "TensorJsonCodec",
    "batch_decoder",
    "batch_encoder",
    "batch_preparer",
    "classic_format",
    "declared_output_topics",
    "dumps",
    "encode_each",
    "parse_json_object",
    "stacked_decoder",
]
