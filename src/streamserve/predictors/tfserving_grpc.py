"""TF Serving ``PredictionService.Predict`` over gRPC: the classic remote path, done right.

Tensors travel as ``tensor_content`` (raw row-major bytes; strings as ``string_val``), so
a float batch costs one memory copy each way. One long-lived channel per target.
Works against our own server and against TensorFlow Serving itself.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from google.protobuf import json_format

from streamserve import tensors
from streamserve.predictors.base import Prediction
from streamserve.predictors.grpc_channel import GrpcTarget, split_grpc_target
from streamserve.predictors.remote import RemoteCall, RemotePredictor
from streamserve.predictors.signatures import (
    ModelSignatures,
    SignatureCache,
    signatures_from_tf_json,
)
from streamserve.protos.gen.tensorflow_serving.apis import (
    get_model_metadata_pb2,
    model_pb2,
    predict_pb2,
    prediction_service_pb2_grpc,
)
from streamserve.runtimes.base import DEFAULT_SIGNATURE

Stub = prediction_service_pb2_grpc.PredictionServiceStub


class TfServingGrpcPredictor(RemotePredictor):
    """Predict via TF Serving gRPC on ``target`` (``"host:port"``, ``"grpc://host:port"``, TLS: ``"grpcs://host:port"``)."""

    def __init__(self, target: str, call: RemoteCall) -> None:
        super().__init__(call)
        address, secure = split_grpc_target(target)
        self._grpc: GrpcTarget[Stub] = GrpcTarget(
            address, Stub, call.per_call_channel, secure=secure, security=call.security
        )
        self.target = self._grpc.url
        self._signatures = SignatureCache(self.target, self._fetch_signatures)

    async def predict(
        self, inputs: Mapping[str, np.ndarray], signature_name: str | None = None
    ) -> Prediction:
        inputs = await self._signatures.conform(inputs, signature_name)
        request = self._request(inputs, signature_name)

        async def invoke(stub: Stub) -> predict_pb2.PredictResponse:
            response: predict_pb2.PredictResponse = await stub.Predict(
                request, timeout=self.timeout_s
            )
            return response

        response = await self._grpc.call(invoke)
        outputs = {name: tensors.tensor_proto_to_numpy(t) for name, t in response.outputs.items()}
        version = self._version_of(response.model_spec)
        self._signatures.observe_version(version)
        return Prediction(outputs, self.model_name, version)

    async def probe(self) -> None:
        """:class:`~streamserve.predictors.base.Probeable`: the server answers the model's
        metadata (TF Serving's ``GetModelMetadata``; an unloaded model is an error)."""
        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        request.model_spec.CopyFrom(self._request({}, None).model_spec)

        async def invoke(stub: Stub) -> object:
            return await stub.GetModelMetadata(request, timeout=self.timeout_s)

        await self._grpc.call(invoke)

    async def close(self) -> None:
        await self._grpc.close()

    async def _fetch_signatures(self) -> ModelSignatures:
        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        self._fill_spec(request.model_spec)

        async def invoke(stub: Stub) -> get_model_metadata_pb2.GetModelMetadataResponse:
            response: get_model_metadata_pb2.GetModelMetadataResponse = await stub.GetModelMetadata(
                request, timeout=self.timeout_s
            )
            return response

        response = await self._grpc.call(invoke)
        signature_def_map = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(signature_def_map)
        as_json = json_format.MessageToDict(signature_def_map, preserving_proto_field_name=True)
        return ModelSignatures(
            signatures_from_tf_json(as_json), self._version_of(response.model_spec)
        )

    def _fill_spec(self, spec: model_pb2.ModelSpec) -> None:
        spec.name = self.model_name
        if self.model_version is not None:
            spec.version.value = self.model_version
        elif self.model_label is not None:
            spec.version_label = self.model_label

    def _request(
        self, inputs: Mapping[str, np.ndarray], signature_name: str | None
    ) -> predict_pb2.PredictRequest:
        request = predict_pb2.PredictRequest()
        self._fill_spec(request.model_spec)
        request.model_spec.signature_name = signature_name or DEFAULT_SIGNATURE
        for name, array in inputs.items():
            request.inputs[name].CopyFrom(tensors.numpy_to_tensor_proto(np.asarray(array)))
        return request

    def _version_of(self, spec: model_pb2.ModelSpec) -> int:
        if spec.HasField("version"):
            return int(spec.version.value)
        return self.model_version or 0
