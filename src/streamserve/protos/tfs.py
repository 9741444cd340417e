"""One import for the TF Serving generated modules: ``from streamserve.protos import tfs``."""

from streamserve.protos.gen.tensorflow.core.example import example_pb2, feature_pb2
from streamserve.protos.gen.tensorflow.core.framework import (
    tensor_pb2,
    tensor_shape_pb2,
    types_pb2,
)
from streamserve.protos.gen.tensorflow.core.protobuf import error_codes_pb2, meta_graph_pb2
from streamserve.protos.gen.tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    input_pb2,
    logging_pb2,
    model_management_pb2,
    model_pb2,
    model_service_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_log_pb2,
    prediction_service_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
    status_pb2,
)
from streamserve.protos.gen.tensorflow_serving.config import (
    file_system_storage_path_source_pb2,
    logging_config_pb2,
    model_server_config_pb2,
    monitoring_config_pb2,
)
from streamserve.protos.gen.tensorflow_serving.example import (
    inception_inference_pb2,
    inception_inference_pb2_grpc,
)
from streamserve.protos.gen.tensorflow_serving.servables.tensorflow import (
    session_bundle_config_pb2,
)

__all__ = [
    "classification_pb2",
    "error_codes_pb2",
    "example_pb2",
    "feature_pb2",
    "file_system_storage_path_source_pb2",
    "get_model_metadata_pb2",
    "get_model_status_pb2",
    "inception_inference_pb2",
    "inception_inference_pb2_grpc",
    "inference_pb2",
    "input_pb2",
    "logging_config_pb2",
    "logging_pb2",
    "meta_graph_pb2",
    "model_management_pb2",
    "model_pb2",
    "model_server_config_pb2",
    "model_service_pb2",
    "model_service_pb2_grpc",
    "monitoring_config_pb2",
    "predict_pb2",
    "prediction_log_pb2",
    "prediction_service_pb2",
    "prediction_service_pb2_grpc",
    "regression_pb2",
    "session_bundle_config_pb2",
    "status_pb2",
    "tensor_pb2",
    "tensor_shape_pb2",
    "types_pb2",
]
