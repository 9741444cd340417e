"""Our :class:`~streamserve.runtimes.base.Signature` as TF Serving's ``SignatureDefMap``.

The same message serves gRPC ``GetModelMetadata`` (packed into an ``Any``) and REST
``/metadata`` (printed as JSON the way TF Serving prints it: proto field names, every
field present, int64 sizes as strings, dtypes as ``DT_*`` names).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from google.protobuf import json_format

from streamserve.protos.tfs import get_model_metadata_pb2, meta_graph_pb2
from streamserve.runtimes.base import Signature, TensorSpec
from streamserve.tensors import dtype_to_tf

SIGNATURE_DEF_FIELD = "signature_def"


def signature_def_map(signatures: Mapping[str, Signature]) -> Any:
    message = get_model_metadata_pb2.SignatureDefMap()
    for key, signature in signatures.items():
        _fill_signature_def(message.signature_def[key], signature)
    return message


def signature_def_map_json(signatures: Mapping[str, Signature]) -> dict[str, Any]:
    return dict(
        json_format.MessageToDict(
            signature_def_map(signatures),
            preserving_proto_field_name=True,
            always_print_fields_with_no_presence=True,
        )
    )


def _fill_signature_def(message: Any, signature: Signature) -> None:
    message.method_name = signature.method_name
    for name, spec in signature.inputs.items():
        _fill_tensor_info(message.inputs[name], spec)
    for name, spec in signature.outputs.items():
        _fill_tensor_info(message.outputs[name], spec)


def _fill_tensor_info(message: meta_graph_pb2.TensorInfo, spec: TensorSpec) -> None:
    message.name = spec.name
    message.dtype = dtype_to_tf(spec.dtype)
    if spec.shape is None:
        message.tensor_shape.unknown_rank = True
        return
    for size in spec.shape:
        message.tensor_shape.dim.add(size=-1 if size is None else size)
