"""TF Serving's gRPC API: ``tensorflow.serving.PredictionService`` and ``ModelService``.

A thin translator: protos in, :class:`InferenceCore` calls, protos out. Behaviour
follows TF Serving's ``prediction_service_impl.cc`` / ``model_service_impl.cc``:

- ``ModelSpec`` picks a version (``Int64Value version``) or a ``version_label``; with
  neither, the latest version (or the model's A/B split, sticky by the ``x-routing-key``
  request metadata). ``signature_name`` defaults to ``serving_default``.
- Responses carry the ``model_spec`` that answered: name, version, signature name.
- ``GetModelMetadata`` requires ``metadata_field: "signature_def"`` and returns a
  ``SignatureDefMap`` packed in a ``google.protobuf.Any``.
- ``MultiInference`` is UNIMPLEMENTED.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from operator import attrgetter
from typing import Any

import grpc

from streamserve.errors import InvalidArgument, Unimplemented
from streamserve.protos.tfs import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)
from streamserve.repository.config import model_configs_from_server_config
from streamserve.server.context import ServerContext
from streamserve.server.core import InferenceCore, ModelRef
from streamserve.server.examples import examples_from_proto
from streamserve.server.grpc_errors import Method, grpc_method
from streamserve.server.model_control import ModelControl, control_for, grpc_authorization
from streamserve.server.signatures import SIGNATURE_DEF_FIELD, signature_def_map
from streamserve.tensors import numpy_to_tensor_proto, tensor_proto_to_numpy

PROTOCOL = "tfserving"
ROUTING_KEY_METADATA = "x-routing-key"


def install(context: ServerContext) -> None:
    """Adapter hook called by :class:`streamserve.server.app.Server`."""
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        PredictionService(context.core, context.options.request_tensor_element_limit()),
        context.grpc_server,
    )
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(
        ModelService(context.core, control_for(context)), context.grpc_server
    )
    context.grpc_services += [
        "tensorflow.serving.PredictionService",
        "tensorflow.serving.ModelService",
    ]


def model_ref(spec: Any, context: grpc.aio.ServicerContext | None = None) -> ModelRef:
    """``ModelSpec`` → :class:`ModelRef` (version, label, routing key)."""
    if not spec.name:
        raise InvalidArgument("Missing ModelSpec name")
    choice = spec.WhichOneof("version_choice")
    version = spec.version.value if choice == "version" else None
    label = spec.version_label if choice == "version_label" else None
    routing_key = None if context is None else functools.partial(_routing_key, context)
    return ModelRef(spec.name, version, label, routing_key)  # metadata read for A/B only


def _routing_key(context: grpc.aio.ServicerContext | None) -> str | None:
    if context is None:
        return None
    for key, value in context.invocation_metadata() or ():
        if key == ROUTING_KEY_METADATA:
            return value if isinstance(value, str) else value.decode("utf-8", "replace")
    return None


def _fill_spec(spec: Any, name: str, version: int, signature_name: str = "") -> None:
    spec.name = name
    spec.version.value = version
    if signature_name:
        spec.signature_name = signature_name


def _request_model(request: Any) -> str:
    return str(request.model_spec.name)


def _response_version(response: Any) -> str:
    return str(response.model_spec.version.value) if response.HasField("model_spec") else ""


def _predicted_version(response: Any) -> str:
    return str(response.model_spec.version.value)  # Predict always answers with model_spec


def _rpc(api: str) -> Callable[[Method], Method]:
    return grpc_method(PROTOCOL, api, _request_model, _response_version)


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, core: InferenceCore, max_tensor_elements: int | None = None) -> None:
        self.core = core
        self.max_tensor_elements = max_tensor_elements  # per request tensor; None: no limit

    @grpc_method(PROTOCOL, "predict", attrgetter("model_spec.name"), _predicted_version)
    async def Predict(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        ref = model_ref(request.model_spec, context)
        limit = self.max_tensor_elements
        protos = request.inputs  # by key: a protobuf map's items() is a slow Python view
        inputs = {name: tensor_proto_to_numpy(protos[name], name, limit) for name in protos}
        result = await self.core.predict(
            ref, inputs, request.model_spec.signature_name, list(request.output_filter)
        )
        response = predict_pb2.PredictResponse()
        for name, array in result.outputs.items():
            numpy_to_tensor_proto(array, out=response.outputs[name], name=name)
        _fill_spec(response.model_spec, result.model_name, result.version, result.signature_name)
        return response

    @_rpc("classify")
    async def Classify(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        ref = model_ref(request.model_spec, context)
        examples = examples_from_proto(request.input)
        result = await self.core.classify(ref, examples, request.model_spec.signature_name)
        response = classification_pb2.ClassificationResponse()
        for pairs in result.classifications:
            classifications = response.result.classifications.add()
            for label, score in pairs:
                classifications.classes.add(label=label, score=score)
        _fill_spec(response.model_spec, result.model_name, result.version, result.signature_name)
        return response

    @_rpc("regress")
    async def Regress(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        ref = model_ref(request.model_spec, context)
        examples = examples_from_proto(request.input)
        result = await self.core.regress(ref, examples, request.model_spec.signature_name)
        response = regression_pb2.RegressionResponse()
        for value in result.values:
            response.result.regressions.add(value=value)
        _fill_spec(response.model_spec, result.model_name, result.version, result.signature_name)
        return response

    @_rpc("multi_inference")
    async def MultiInference(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        raise Unimplemented(
            "MultiInference is not supported by streamserve; call Classify, Regress or Predict"
        )

    @_rpc("metadata")
    async def GetModelMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        _check_metadata_fields(list(request.metadata_field))
        metadata = self.core.metadata(model_ref(request.model_spec, context))
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        _fill_spec(response.model_spec, metadata.name, metadata.version)
        response.metadata[SIGNATURE_DEF_FIELD].Pack(signature_def_map(metadata.signatures))
        return response


def _check_metadata_fields(fields: list[str]) -> None:
    if not fields:
        raise InvalidArgument("GetModelMetadataRequest must specify at least one metadata_field")
    for field in fields:
        if field != SIGNATURE_DEF_FIELD:
            raise InvalidArgument(f"Metadata field {field} is not supported")


class ModelService(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, core: InferenceCore, control: ModelControl | None = None) -> None:
        self.core = core
        self.control = control or ModelControl()  # default: reloads refused

    @grpc_method(PROTOCOL, "status", _request_model, lambda response: "")
    async def GetModelStatus(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        ref = model_ref(request.model_spec)
        response = get_model_status_pb2.GetModelStatusResponse()
        for status in self.core.status(ref):
            entry = response.model_version_status.add(version=status.version, state=status.state)
            entry.status.error_code = int(status.error_code)
            entry.status.error_message = status.error_message
        return response

    @grpc_method(PROTOCOL, "reload_config", lambda request: "", lambda response: "")
    async def HandleReloadConfigRequest(
        self, request: Any, context: grpc.aio.ServicerContext
    ) -> Any:
        self.control.authorize(grpc_authorization(context))
        configs = model_configs_from_server_config(request.config)
        response = model_management_pb2.ReloadConfigResponse()
        if configs is None:  # empty ModelServerConfig: nothing to do, as in TF Serving
            return response
        configs = self.control.check_configs(configs)
        await asyncio.to_thread(self.core.reload_config, configs)  # errors → gRPC status
        return response
