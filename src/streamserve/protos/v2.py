"""One import for the KServe V2 generated modules: ``from streamserve.protos import v2``."""

from streamserve.protos.gen.inference import (
    grpc_service_pb2,
    grpc_service_pb2_grpc,
    model_config_pb2,
)

__all__ = ["grpc_service_pb2", "grpc_service_pb2_grpc", "model_config_pb2"]
