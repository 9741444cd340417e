"""KServe V2 / Open Inference Protocol over gRPC: ``inference.GRPCInferenceService``.

A thin translator over :class:`~streamserve.server.core.InferenceCore`, sharing V2
semantics with the REST adapter through :class:`~streamserve.server.v2_plane.V2Plane`.
It runs on the same ``grpc.aio`` server (``--port``) as TF Serving's services.

Wire rules (as Triton):

- ``raw_input_contents`` holds one entry per input, in input order, or is empty (then
  every input uses typed ``contents``).
- Outputs travel in ``raw_output_contents`` when the request sent raw inputs, when a
  request parameter ``binary_data_output`` is true, or when an output has no typed
  field (FP16/BF16); otherwise in typed ``contents``. Never mixed in one response.
- ``parameters``: ``signature_name`` picks a signature, ``routing_key`` (or the
  ``x-routing-key`` metadata) a sticky A/B arm. ``model_version`` in the response is
  the version that answered.
- ``ModelStreamInfer`` answers each request in order; a failing request yields a
  response with ``error_message`` and the stream goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from operator import attrgetter
from typing import Any, NamedTuple

import grpc
import numpy as np

from streamserve.errors import InvalidArgument, StreamserveError, Unimplemented
from streamserve.protos.v2 import grpc_service_pb2 as pb
from streamserve.protos.v2 import grpc_service_pb2_grpc as pb_grpc
from streamserve.server.context import ServerContext
from streamserve.server.grpc_errors import Method, grpc_errors, grpc_method
from streamserve.server.model_control import ModelControl, control_for, grpc_authorization
from streamserve.server.v2_plane import PROTOCOL, ROUTING_KEY_HEADER, V2Plane, plane_for
from streamserve.tensors import add_raw_output, fill_infer_output, infer_input_to_numpy

STREAM_WINDOW = 64  # requests of one stream in flight at once
_RAW_ONLY = (np.dtype(np.float16),)


def install(context: ServerContext) -> None:
    """Adapter hook called by :class:`streamserve.server.app.Server`."""
    servicer = InferenceServicer(plane_for(context), control_for(context))
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, context.grpc_server)
    context.grpc_services.append("inference.GRPCInferenceService")


def _model_of(request: Any) -> str:
    return str(getattr(request, "model_name", "") or getattr(request, "name", ""))


def _version_of(response: Any) -> str:
    version = getattr(response, "model_version", "")
    if not version:  # ModelMetadata: the version when only one answered
        versions: Sequence[str] = getattr(response, "versions", ())
        version = versions[0] if len(versions) == 1 else ""
    return str(version)


def _rpc(api: str) -> Callable[[Method], Method]:
    return grpc_method(PROTOCOL, api, _model_of, _version_of)


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, plane: V2Plane, control: ModelControl | None = None) -> None:
        self.plane = plane
        self.core = plane.core
        self.control = control or ModelControl()  # default: load/unload refused

    # -- health and metadata --------------------------------------------------------------

    @grpc_errors
    async def ServerLive(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return pb.ServerLiveResponse(live=True)

    @grpc_errors
    async def ServerReady(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return pb.ServerReadyResponse(ready=self.plane.server_ready())

    @grpc_errors
    async def ModelReady(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return pb.ModelReadyResponse(ready=self.plane.model_ready(request.name, request.version))

    @grpc_errors
    async def ServerMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return pb.ServerMetadataResponse(**self.plane.server_metadata())

    @_rpc("metadata")
    async def ModelMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        view = self.plane.metadata(request.name, request.version)
        response = pb.ModelMetadataResponse(
            name=view.name, versions=view.versions, platform=view.platform
        )
        for target, tensors in ((response.inputs, view.inputs), (response.outputs, view.outputs)):
            for tensor in tensors:
                target.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
        return response

    @grpc_errors
    async def ModelConfig(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        raise Unimplemented("ModelConfig is not supported; use ModelMetadata")

    @grpc_errors
    async def ModelStatistics(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        raise Unimplemented(
            "ModelStatistics is not supported; scrape /metrics on the REST port instead"
        )

    # -- inference ------------------------------------------------------------------------

    @grpc_method(PROTOCOL, "infer", attrgetter("model_name"), attrgetter("model_version"))
    async def ModelInfer(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self._infer(request, lambda: _routing_key(context))

    async def _infer(self, request: Any, metadata_key: Callable[[], str | None]) -> Any:
        """``metadata_key`` gives the ``x-routing-key`` metadata (read for A/B splits only)."""
        raws = request.raw_input_contents
        inputs = decode_inputs(request.inputs, raws)
        options = _infer_options(request.parameters)
        parameter_key = options.routing_key
        ref = self.plane.ref(
            request.model_name, request.model_version, lambda: metadata_key() or parameter_key
        )
        requested = request.outputs
        result = await self.core.predict(
            ref,
            inputs,
            options.signature_name,
            [output.name for output in requested] if requested else (),
        )
        response = pb.ModelInferResponse(
            model_name=result.model_name, model_version=str(result.version), id=request.id
        )
        encode_outputs(response, result.outputs, bool(raws) or options.binary_output)
        return response

    async def ModelStreamInfer(
        self, request_iterator: AsyncIterator[Any], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Any]:
        """Pipelined: up to STREAM_WINDOW requests run at once, answers keep request order."""
        stream_key = _routing_key(context)
        pending: asyncio.Queue[asyncio.Future[Any] | None] = asyncio.Queue(STREAM_WINDOW)

        async def read_requests() -> None:
            try:
                async for request in request_iterator:
                    await pending.put(
                        asyncio.ensure_future(self._stream_one(request, lambda: stream_key))
                    )
            finally:
                await pending.put(None)

        reader = asyncio.ensure_future(read_requests())
        try:
            while (task := await pending.get()) is not None:
                yield await task
            await reader  # surfaces a broken request stream
        finally:
            reader.cancel()
            while not pending.empty():
                leftover = pending.get_nowait()
                if leftover is not None:
                    leftover.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader

    async def _stream_one(self, request: Any, metadata_key: Callable[[], str | None]) -> Any:
        started = time.perf_counter()
        status, version = "OK", ""
        try:
            response = await self._infer(request, metadata_key)
            version = response.model_version
            return pb.ModelStreamInferResponse(infer_response=response)
        except StreamserveError as exc:
            status = exc.code.name
            return _stream_error(request, exc.message)
        except Exception as exc:  # one bad request must not end the stream
            status = "INTERNAL"
            return _stream_error(request, f"{type(exc).__name__}: {exc}")
        finally:
            if self.core.observed:
                self.core.observe_request(
                    request.model_name, version, PROTOCOL, "stream_infer", status, started
                )

    # -- repository extension -------------------------------------------------------------

    @grpc_errors
    async def RepositoryIndex(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        response = pb.RepositoryIndexResponse()
        for entry in self.plane.repository_index(request.ready):
            response.models.add(
                name=entry.name, version=entry.version, state=entry.state, reason=entry.reason
            )
        return response

    @_rpc("load")
    async def RepositoryModelLoad(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        self.control.authorize(grpc_authorization(context))
        base_path = None
        if "base_path" in request.parameters:
            parameter = request.parameters["base_path"]
            if parameter.WhichOneof("parameter_choice") != "string_param":
                raise InvalidArgument("parameter base_path must be a string_param")
            base_path = parameter.string_param
            self.control.check_base_path(base_path)
        await self.plane.load(request.model_name, base_path)
        return pb.RepositoryModelLoadResponse()

    @_rpc("unload")
    async def RepositoryModelUnload(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        self.control.authorize(grpc_authorization(context))
        await self.plane.unload(request.model_name)
        return pb.RepositoryModelUnloadResponse()


# -- translation helpers ------------------------------------------------------------------


def decode_inputs(tensors: Sequence[Any], raws: Sequence[bytes]) -> dict[str, np.ndarray]:
    """A request's ``inputs`` with its ``raw_input_contents`` → arrays by name."""
    if not tensors:
        raise InvalidArgument("The inference request has no inputs")
    if raws and len(raws) != len(tensors):
        raise InvalidArgument(
            f"Expected {len(tensors)} raw_input_contents entries (one per input), got {len(raws)}"
        )
    arrays: dict[str, np.ndarray] = {}
    for index, tensor in enumerate(tensors):
        name = tensor.name
        if name in arrays:
            raise InvalidArgument(f"Input {name!r} is given more than once")
        arrays[name] = infer_input_to_numpy(tensor, raws[index] if raws else None)
    return arrays


class InferOptions(NamedTuple):
    """What a ``ModelInferRequest``'s ``parameters`` ask for."""

    signature_name: str = ""
    routing_key: str | None = None
    binary_output: bool = False


_DEFAULT_OPTIONS = InferOptions()


def _infer_options(parameters: Mapping[str, Any]) -> InferOptions:
    if not parameters:  # the common case: no lookups into an empty protobuf map
        return _DEFAULT_OPTIONS
    return InferOptions(
        _string_param(parameters, "signature_name") or "",
        _string_param(parameters, "routing_key"),
        _bool_param(parameters, "binary_data_output"),
    )


def encode_outputs(response: Any, outputs: Mapping[str, np.ndarray], raw: bool) -> None:
    raw = raw or any(array.dtype in _RAW_ONLY for array in outputs.values())
    tensors, raw_contents = response.outputs, response.raw_output_contents
    for name, array in outputs.items():
        if raw:
            raw_contents.append(add_raw_output(tensors, name, array))
        else:
            fill_infer_output(tensors.add(), name, array, raw=False)


def _stream_error(request: Any, message: str) -> Any:
    response = pb.ModelStreamInferResponse(error_message=message)
    response.infer_response.model_name = request.model_name
    response.infer_response.id = request.id
    return response


def _routing_key(context: grpc.aio.ServicerContext) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == ROUTING_KEY_HEADER:
            return value if isinstance(value, str) else value.decode("utf-8", "replace")
    return None


def _string_param(parameters: Any, key: str) -> str | None:
    if key not in parameters:
        return None
    parameter = parameters[key]
    if parameter.WhichOneof("parameter_choice") != "string_param":
        raise InvalidArgument(f"parameter {key} must be a string_param")
    return str(parameter.string_param)


def _bool_param(parameters: Any, key: str) -> bool:
    if key not in parameters:
        return False
    parameter = parameters[key]
    if parameter.WhichOneof("parameter_choice") != "bool_param":
        raise InvalidArgument(f"parameter {key} must be a bool_param")
    return bool(parameter.bool_param)
