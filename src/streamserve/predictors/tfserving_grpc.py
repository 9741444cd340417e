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
from streamserve.predictors.grpc_channel import GrpcPredictor
from streamserve.predictors.remote import RemoteCall
from streamserve.predictors.signatures import ModelSignatures, signatures_from_tf_json
from streamserve.protos.gen.tensorflow_serving.apis import (
    get_model_metadata_pb2,
    model_pb2,
    predict_pb2,
    prediction_service_pb2_grpc,
)
from streamserve.runtimes.base import DEFAULT_SIGNATURE

Stub = prediction_service_pb2_grpc.PredictionServiceStub


class TfServingGrpcPredictor(GrpcPredictor[Stub]):
    """Predict via TF Serving gRPC on ``target`` (``"host:port"``, ``"grpc://host:port"``, TLS: ``"grpcs://host:port"``)."""

    def __init__(self, target: str, call: RemoteCall) -> None:
        super().__init__(target, call, Stub)

    async def predict(
        self, inputs: Mapping[str, np.ndarray], signature_name: str | None = None
    ) -> Prediction:
        inputs = await self._signatures.conform(inputs, signature_name)
        request = self._request(inputs, signature_name)
        response: predict_pb2.PredictResponse = await self._unary(
            lambda stub: stub.Predict, request
        )
        outputs = {name: tensors.tensor_proto_to_numpy(t) for name, t in response.outputs.items()}
        version = self._version_of(response.model_spec)
        self._signatures.observe_version(version)
        return Prediction(outputs, self.model_name, version)

    async def probe(self) -> None:
        """:class:`~streamserve.predictors.base.Probeable`: the server answers the model's
        metadata (TF Serving's ``GetModelMetadata``; an unloaded model is an error)."""
        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        request.model_spec.CopyFrom(self._request({}, None).model_spec)
        await self._unary(lambda stub: stub.GetModelMetadata, request)

    async def _fetch_signatures(self) -> ModelSignatures:
        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        self._fill_spec(request.model_spec)
        response: get_model_metadata_pb2.GetModelMetadataResponse = await self._unary(
            lambda stub: stub.GetModelMetadata, request
        )
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
