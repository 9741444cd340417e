"""KServe V2 / Open Inference Protocol over HTTP, on the REST port beside ``/v1``.

Routes: ``GET /v2``, ``/v2/health/live``, ``/v2/health/ready``,
``GET /v2/models/{m}[/versions/{v}]`` (metadata), ``.../ready``,
``POST .../infer`` (JSON, plus the binary tensor data extension tritonclient uses:
``Inference-Header-Content-Length`` gives the JSON part's length and tensors with
``parameters.binary_data_size`` follow it in input order) and the repository
extension ``POST /v2/repository/index``, ``/v2/repository/models/{m}/load|unload``.
Errors are ``{"error": "..."}`` with the HTTP status of the error's code.

What the REST and gRPC V2 adapters share lives in :mod:`streamserve.server.v2_plane`.

A request may pick a signature with ``parameters.signature_name`` (default
``serving_default``) and a sticky A/B arm with ``parameters.routing_key`` or the
``x-routing-key`` header; ``model_version`` in the response is the version that answered.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Mapping
from typing import Any

import numpy as np
import orjson

from streamserve.errors import InvalidArgument, StreamserveError
from streamserve.server.context import ServerContext
from streamserve.server.http import Request, Response, json_response
from streamserve.server.model_control import ModelControl, control_for
from streamserve.server.v2_plane import PROTOCOL, ROUTING_KEY_HEADER, TensorView, V2Plane, plane_for
from streamserve.tensors import numpy_to_v2_json, split_binary_data, v2_json_to_numpy

HEADER_LENGTH = "inference-header-content-length"
_BINARY_CONTENT_TYPE = b"application/octet-stream"


def install(context: ServerContext) -> None:
    """Adapter hook called by :class:`streamserve.server.app.Server`."""
    if context.rest_app is None:
        return
    rest = V2Rest(plane_for(context), control_for(context))
    app = context.rest_app
    app.add_route("GET", "/v2", rest.server_metadata)
    app.add_route("GET", "/v2/", rest.server_metadata)
    app.add_route("GET", "/v2/health/live", rest.live)
    app.add_route("GET", "/v2/health/ready", rest.ready)
    for prefix in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
        app.add_route("GET", prefix, rest.model_metadata)
        app.add_route("GET", prefix + "/ready", rest.model_ready)
        app.add_route("POST", prefix + "/infer", rest.infer)
    app.add_route("POST", "/v2/repository/index", rest.repository_index)
    app.add_route("POST", "/v2/repository/models/{name}/load", rest.load)
    app.add_route("POST", "/v2/repository/models/{name}/unload", rest.unload)


_EMPTY_OK = Response(status=200, body=b"")


class V2Rest:
    def __init__(self, plane: V2Plane, control: ModelControl | None = None) -> None:
        self.plane = plane
        self.core = plane.core
        self.control = control or ModelControl()  # default: load/unload refused

    async def server_metadata(self, request: Request) -> Response:
        return json_response(self.plane.server_metadata())

    async def live(self, request: Request) -> Response:
        return _EMPTY_OK

    async def ready(self, request: Request) -> Response:
        if self.plane.server_ready():
            return _EMPTY_OK
        return json_response({"error": "Server is not ready: not every model is loaded"}, 503)

    async def model_ready(self, request: Request) -> Response:
        name, version = _name_version(request)
        if self.plane.model_ready(name, version):
            return _EMPTY_OK
        return json_response({"error": f"Model {name!r} is not ready"}, 400)

    async def model_metadata(self, request: Request) -> Response:
        name, version = _name_version(request)
        return await self._observed(request, "metadata", self._metadata(name, version))

    async def _metadata(self, name: str, version: str) -> tuple[Response, str]:
        view = self.plane.metadata(name, version)
        body = {
            "name": view.name,
            "versions": view.versions,
            "platform": view.platform,
            "inputs": [_tensor_json(t) for t in view.inputs],
            "outputs": [_tensor_json(t) for t in view.outputs],
        }
        return json_response(body), view.versions[0] if len(view.versions) == 1 else ""

    async def infer(self, request: Request) -> Response:
        return await self._observed(request, "infer", self._infer(request))

    async def _infer(self, request: Request) -> tuple[Response, str]:
        name, version = _name_version(request)
        document, binary = split_binary_body(request.body, request.headers.get(HEADER_LENGTH))
        parameters = _dict(document.get("parameters"), "parameters")
        inputs = decode_inputs(document.get("inputs"), binary)
        requested = _dict_list(document.get("outputs"), "outputs")
        routing_key = request.headers.get(ROUTING_KEY_HEADER) or _opt_str(
            parameters.get("routing_key"), "parameters.routing_key"
        )
        signature = _opt_str(parameters.get("signature_name"), "parameters.signature_name")
        result = await self.core.predict(
            self.plane.ref(name, version, routing_key),
            inputs,
            signature or "",
            [_output_name(o) for o in requested],
        )
        all_binary = parameters.get("binary_data_output") is True
        body: dict[str, Any] = {"model_name": result.model_name}
        body["model_version"] = str(result.version)
        if "id" in document:
            body["id"] = document["id"]
        binary_flags = {_output_name(o): _wants_binary(o, all_binary) for o in requested}
        outputs, chunks = encode_outputs(result.outputs, binary_flags, all_binary)
        body["outputs"] = outputs
        return _infer_response(body, chunks), str(result.version)

    async def repository_index(self, request: Request) -> Response:
        document = request.json() if request.body.strip() else {}
        ready_only = _dict(document, "body").get("ready") is True
        entries = [
            {k: v for k, v in entry.__dict__.items() if v != "" or k == "state"}
            for entry in self.plane.repository_index(ready_only)
        ]
        return json_response(entries)

    async def load(self, request: Request) -> Response:
        self.control.authorize(request.headers.get("authorization"))
        name = request.path_params["name"]
        document = request.json() if request.body.strip() else {}
        parameters = _dict(_dict(document, "body").get("parameters"), "parameters")
        base_path = _opt_str(parameters.get("base_path"), "parameters.base_path")
        if base_path:
            self.control.check_base_path(base_path)
        await self.plane.load(name, base_path)
        return _EMPTY_OK

    async def unload(self, request: Request) -> Response:
        self.control.authorize(request.headers.get("authorization"))
        await self.plane.unload(request.path_params["name"])
        return _EMPTY_OK

    async def _observed(
        self, request: Request, api: str, work: Awaitable[tuple[Response, str]]
    ) -> Response:
        """Await ``work`` (→ response, version that answered) and report it to observers."""
        started = time.perf_counter()
        status, version = "OK", ""
        try:
            response, version = await work
            return response
        except StreamserveError as exc:
            status = exc.code.name
            raise
        except asyncio.CancelledError:
            status = "CANCELLED"
            raise
        except Exception:
            status = "INTERNAL"
            raise
        finally:
            if self.core.observed:
                name = request.path_params.get("name", "")
                self.core.observe_request(name, version, PROTOCOL, api, status, started)


# -- request decoding ---------------------------------------------------------------------


def split_binary_body(body: bytes, header_length: str | None) -> tuple[dict[str, Any], bytes]:
    """The JSON document and the binary tail (binary tensor data extension)."""
    if header_length is None:
        json_part, binary = body, b""
    else:
        try:
            length = int(header_length)
        except ValueError:
            length = -1
        if not 0 <= length <= len(body):
            raise InvalidArgument(
                f"Invalid Inference-Header-Content-Length {header_length!r} for a body "
                f"of {len(body)} bytes"
            )
        json_part, binary = body[:length], body[length:]
    if not json_part.strip():
        raise InvalidArgument("The inference request has no JSON body")
    try:
        document = orjson.loads(json_part)
    except orjson.JSONDecodeError as exc:
        raise InvalidArgument(f"Invalid JSON in inference request: {exc}") from None
    return _dict(document, "inference request"), binary


def decode_inputs(raw_inputs: object, binary: bytes) -> dict[str, np.ndarray]:
    """V2 JSON inputs (+ the binary tail, sliced by ``binary_data_size``) → ``{name: array}``."""
    inputs = _dict_list(raw_inputs, "inputs")
    if not inputs:
        raise InvalidArgument("The inference request has no inputs")
    for tensor in inputs:
        _dict(tensor.get("parameters"), f"input {tensor.get('name')!r} parameters")
    chunks = split_binary_data(inputs, binary)
    arrays: dict[str, np.ndarray] = {}
    for tensor, chunk in zip(inputs, chunks, strict=True):
        array = v2_json_to_numpy(tensor, chunk)
        name = tensor["name"]
        if name in arrays:
            raise InvalidArgument(f"Input {name!r} is given more than once")
        arrays[name] = array
    return arrays


def _output_name(output: dict[str, Any]) -> str:
    name = output.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidArgument("Every requested output needs a non-empty string 'name'")
    return name


def _wants_binary(output: dict[str, Any], default: bool) -> bool:
    parameters = _dict(output.get("parameters"), "output parameters")
    flag = parameters.get("binary_data", default)
    return flag is True


# -- response encoding --------------------------------------------------------------------


def encode_outputs(
    outputs: Mapping[str, np.ndarray], binary_flags: Mapping[str, bool], all_binary: bool
) -> tuple[list[dict[str, Any]], list[bytes]]:
    encoded: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for name, array in outputs.items():
        tensor, chunk = numpy_to_v2_json(name, array, binary_flags.get(name, all_binary))
        encoded.append(tensor)
        if chunk is not None:
            chunks.append(chunk)
    return encoded, chunks


def _infer_response(body: dict[str, Any], chunks: list[bytes]) -> Response:
    header = orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
    if not chunks:
        return Response(body=header)
    return Response(
        body=b"".join([header, *chunks]),
        content_type=_BINARY_CONTENT_TYPE,
        headers=[(b"inference-header-content-length", str(len(header)).encode())],
    )


def _tensor_json(view: TensorView) -> dict[str, Any]:
    return {"name": view.name, "datatype": view.datatype, "shape": view.shape}


# -- small validators ---------------------------------------------------------------------


def _name_version(request: Request) -> tuple[str, str]:
    return request.path_params["name"], request.path_params.get("version", "")


def _dict(value: object, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidArgument(f"{what} must be a JSON object")
    return value


def _dict_list(value: object, what: str) -> list[dict[str, Any]]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise InvalidArgument(f"'{what}' must be a list of JSON objects")
    return value


def _opt_str(value: object, what: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidArgument(f"{what} must be a string")
    return value


__all__ = ["V2Rest", "decode_inputs", "install", "split_binary_body"]
