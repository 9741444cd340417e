"""KServe V2 (Open Inference Protocol) ``ModelInfer`` over gRPC.

Inputs travel as ``raw_input_contents`` (row-major little-endian bytes, BYTES elements
length-prefixed), the fastest form the protocol has. V2 has no version labels.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from streamserve import tensors
from streamserve.errors import InvalidArgument, Unavailable
from streamserve.predictors.base import Prediction
from streamserve.predictors.grpc_channel import GrpcPredictor
from streamserve.predictors.remote import RemoteCall
from streamserve.predictors.signatures import ModelSignatures, conform_default, signature_from_v2
from streamserve.protos.gen.inference import grpc_service_pb2, grpc_service_pb2_grpc
from streamserve.runtimes.base import DEFAULT_SIGNATURE

Stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub

# V2 requests have no signature field; a non-default signature travels as this request
# parameter (our server reads it; others ignore it).
SIGNATURE_PARAMETER = "signature_name"


class V2GrpcPredictor(GrpcPredictor[Stub]):
    """Infer via V2 gRPC on ``target`` (``"host:port"``, ``"grpc://host:port"``, TLS: ``"grpcs://host:port"``)."""

    def __init__(self, target: str, call: RemoteCall) -> None:
        super().__init__(target, call, Stub)

    async def predict(
        self, inputs: Mapping[str, np.ndarray], signature_name: str | None = None
    ) -> Prediction:
        inputs = await conform_default(self._signatures, inputs, signature_name)
        request = self._request(inputs, signature_name)
        response: grpc_service_pb2.ModelInferResponse = await self._unary(
            lambda stub: stub.ModelInfer, request
        )
        version = _version(response.model_version, self.model_version)
        self._signatures.observe_version(version)
        return Prediction(
            _decode_outputs(response), response.model_name or self.model_name, version
        )

    async def probe(self) -> None:
        """:class:`~streamserve.predictors.base.Probeable`: V2 ``ModelReady`` says ready."""
        version = "" if self.model_version is None else str(self.model_version)
        request = grpc_service_pb2.ModelReadyRequest(name=self.model_name, version=version)
        reply: grpc_service_pb2.ModelReadyResponse = await self._unary(
            lambda stub: stub.ModelReady, request
        )
        if not reply.ready:
            raise Unavailable(f"{self.target}: model {self.model_name} is not ready")

    async def _fetch_signatures(self) -> ModelSignatures:
        request = grpc_service_pb2.ModelMetadataRequest(name=self.model_name)
        if self.model_version is not None:
            request.version = str(self.model_version)
        response: grpc_service_pb2.ModelMetadataResponse = await self._unary(
            lambda stub: stub.ModelMetadata, request
        )
        signature = signature_from_v2(list(response.inputs), list(response.outputs))
        return ModelSignatures({DEFAULT_SIGNATURE: signature}, self.model_version or 0)

    def _request(
        self, inputs: Mapping[str, np.ndarray], signature_name: str | None
    ) -> grpc_service_pb2.ModelInferRequest:
        request = grpc_service_pb2.ModelInferRequest(model_name=self.model_name)
        if self.model_version is not None:
            request.model_version = str(self.model_version)
        if signature_name:
            request.parameters[SIGNATURE_PARAMETER].string_param = signature_name
        for name, array in inputs.items():
            tensor, raw = tensors.numpy_to_infer_input(name, array, raw=True)
            request.inputs.append(tensor)
            request.raw_input_contents.append(raw or b"")
        return request


def _decode_outputs(response: grpc_service_pb2.ModelInferResponse) -> dict[str, np.ndarray]:
    raw = response.raw_output_contents
    if raw and len(raw) != len(response.outputs):
        raise InvalidArgument(
            f"reply has {len(raw)} raw_output_contents for {len(response.outputs)} outputs"
        )
    return {
        output.name: tensors.infer_output_to_numpy(output, raw[index] if raw else None)
        for index, output in enumerate(response.outputs)
    }


def _version(reported: str, pinned: int | None) -> int:
    if reported.isdigit():
        return int(reported)
    return pinned or 0
