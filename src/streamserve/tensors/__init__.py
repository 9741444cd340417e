"""The one home for tensor codecs: numpy ⇄ TF Serving TensorProto, KServe V2 (gRPC and JSON)
and TF Serving REST JSON, plus the dtype tables between them.

Conventions: strings (TF ``DT_STRING``, V2 ``BYTES``) are numpy ``object`` arrays of
``bytes``; decoded arrays may be read-only zero-copy views of the request bytes (copy before
writing into them); every decode error raises ``streamserve.errors.InvalidArgument`` naming
the tensor.
"""

from streamserve.tensors._dtypes import (
    BFLOAT16,
    dtype_to_tf,
    dtype_to_v2,
    tf_to_dtype,
    v2_to_dtype,
)
from streamserve.tensors.rest import (
    numpy_to_rest_predictions,
    rest_inputs_to_numpy,
    rest_instances_to_numpy,
    rest_predict_response,
)
from streamserve.tensors.tf_proto import numpy_to_tensor_proto, tensor_proto_to_numpy
from streamserve.tensors.v2 import (
    add_raw_output,
    fill_infer_output,
    infer_input_to_numpy,
    infer_output_to_numpy,
    numpy_to_infer_input,
    numpy_to_infer_output,
    numpy_to_v2_json,
    split_binary_data,
    v2_json_to_numpy,
)

__all__ = [
    "BFLOAT16",
    "add_raw_output",
    "dtype_to_tf",
    "dtype_to_v2",
    "fill_infer_output",
    "infer_input_to_numpy",
    "infer_output_to_numpy",
    "numpy_to_infer_input",
    "numpy_to_infer_output",
    "numpy_to_rest_predictions",
    "numpy_to_tensor_proto",
    "numpy_to_v2_json",
    "rest_inputs_to_numpy",
    "rest_instances_to_numpy",
    "rest_predict_response",
    "split_binary_data",
    "tensor_proto_to_numpy",
    "tf_to_dtype",
    "v2_json_to_numpy",
    "v2_to_dtype",
]
