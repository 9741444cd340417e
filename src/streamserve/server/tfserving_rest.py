"""TF Serving's REST API (``/v1/models/...``) on the HTTP server's route table.

- ``GET /v1/models/{name}[/versions/{v}|/labels/{l}]`` → model status, printed as TF
  Serving prints it (versions as strings, state and error code names).
- ``GET .../metadata`` → ``{"model_spec": ..., "metadata": {"signature_def": ...}}``.
- ``POST ...:predict`` with row (``instances``) or columnar (``inputs``) tensors,
  ``{"b64": ...}`` for binary values and an optional ``signature_name`` →
  ``{"predictions": ...}`` or ``{"outputs": ...}``.
- ``POST ...:classify`` / ``:regress`` with ``{"examples": [...], "context"?: {...}}``
  → ``{"result": ...}``.

Errors are ``{"error": "..."}`` with TF Serving's HTTP status for the error code. An
``X-Routing-Key`` header makes A/B split routing sticky per key.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import numpy as np

from streamserve.errors import InvalidArgument, StreamserveError
from streamserve.repository import VersionStatus
from streamserve.server.context import ServerContext
from streamserve.server.core import InferenceCore, ModelRef
from streamserve.server.examples import examples_from_json, labelled
from streamserve.server.http import App, Request, Response, json_response
from streamserve.server.signatures import signature_def_map_json
from streamserve.tensors import (
    numpy_to_rest_predictions,
    rest_inputs_to_numpy,
    rest_instances_to_numpy,
)

PROTOCOL = "tfserving"
ROUTING_KEY_HEADER = "x-routing-key"
_MODEL = r"^/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>\d+)|/labels/(?P<label>[^/:]+))?"

Handler = Callable[[Request], Awaitable[Response]]


def install(context: ServerContext) -> None:
    """Adapter hook called by :class:`streamserve.server.app.Server`."""
    if context.rest_app is not None:
        add_routes(context.rest_app, context.core)


def add_routes(app: App, core: InferenceCore) -> None:
    api = TFServingRest(core)
    app.add_route_regex("GET", _MODEL + "$", api.observed("status", api.status))
    app.add_route_regex("GET", _MODEL + "/metadata$", api.observed("metadata", api.metadata))
    app.add_route_regex("POST", _MODEL + ":predict$", api.observed("predict", api.predict))
    app.add_route_regex("POST", _MODEL + ":classify$", api.observed("classify", api.classify))
    app.add_route_regex("POST", _MODEL + ":regress$", api.observed("regress", api.regress))


def model_ref(request: Request) -> ModelRef:
    params = request.path_params
    version = params.get("version")
    return ModelRef(
        params["name"],
        int(version) if version is not None else None,
        params.get("label"),
        request.headers.get(ROUTING_KEY_HEADER),
    )


class TFServingRest:
    def __init__(self, core: InferenceCore) -> None:
        self.core = core

    def observed(self, api: str, handler: Handler) -> Handler:
        """Report each request (model, answering version, status) to the core's observers."""
        core = self.core

        async def observed_handler(request: Request) -> Response:
            if not core.observed:
                return await handler(request)
            started, status, version = time.perf_counter(), "CANCELLED", ""
            try:
                response = await handler(request)
                status, version = "OK", response_version(response)
                return response
            except StreamserveError as exc:
                status = exc.code.name
                raise
            except Exception:
                status = "INTERNAL"
                raise
            finally:
                name = request.path_params.get("name", "")
                core.observe_request(name, version, PROTOCOL, api, status, started)

        return observed_handler

    async def status(self, request: Request) -> Response:
        statuses = self.core.status(model_ref(request))
        body = {"model_version_status": [_status_json(status) for status in statuses]}
        return _pretty(body)

    async def metadata(self, request: Request) -> Response:
        metadata = self.core.metadata(model_ref(request))
        body = {
            "model_spec": {
                "name": metadata.name,
                "signature_name": "",
                "version": str(metadata.version),
            },
            "metadata": {"signature_def": signature_def_map_json(metadata.signatures)},
        }
        return _with_version(_pretty(body), metadata.version)

    async def predict(self, request: Request) -> Response:
        body = _json_object(request)
        row_format = _row_format(body)
        tensors = body["instances"] if row_format else body["inputs"]

        def decode(signature: Any) -> Mapping[str, np.ndarray]:
            if row_format:
                return rest_instances_to_numpy(tensors, signature.inputs)
            return rest_inputs_to_numpy(tensors, signature.inputs)

        result = await self.core.predict(model_ref(request), decode, _signature_name(body))
        key = "predictions" if row_format else "outputs"
        payload = {key: numpy_to_rest_predictions(result.outputs, row_format)}
        response = json_response(payload, allow_nan=_has_non_finite(result.outputs.values()))
        return _with_version(response, result.version)

    async def classify(self, request: Request) -> Response:
        body = _json_object(request)
        examples = examples_from_json(body)
        result = await self.core.classify(model_ref(request), examples, _signature_name(body))
        rows = [labelled(pairs) for pairs in result.classifications]
        scores = (score for pairs in result.classifications for _, score in pairs)
        response = json_response({"result": rows}, allow_nan=not all(map(math.isfinite, scores)))
        return _with_version(response, result.version)

    async def regress(self, request: Request) -> Response:
        body = _json_object(request)
        examples = examples_from_json(body)
        result = await self.core.regress(model_ref(request), examples, _signature_name(body))
        allow_nan = not all(map(math.isfinite, result.values))
        response = json_response({"result": result.values}, allow_nan=allow_nan)
        return _with_version(response, result.version)


# -- helpers ---------------------------------------------------------------------------------

_VERSION_HEADER = b"x-model-version"


def response_version(response: Response) -> str:
    for name, value in response.headers:
        if name == _VERSION_HEADER:
            return value.decode()
    return ""


def _with_version(response: Response, version: int) -> Response:
    """Name the answering version in a header (TF Serving's REST body has no field for it)."""
    response.headers.append((_VERSION_HEADER, str(version).encode()))
    return response


def _status_json(status: VersionStatus) -> dict[str, Any]:
    return {
        "version": str(status.version),
        "state": status.state.name,
        "status": {"error_code": status.error_code.name, "error_message": status.error_message},
    }


def _pretty(body: Any) -> Response:
    """Indented like TF Serving's protobuf JSON printer (one space per level)."""
    return Response(body=json.dumps(body, indent=1).encode())


def _json_object(request: Request) -> dict[str, Any]:
    body = request.json()
    if not isinstance(body, dict):
        raise InvalidArgument("JSON Value: request body must be a JSON object")
    return body


def _row_format(body: Mapping[str, Any]) -> bool:
    has_instances, has_inputs = "instances" in body, "inputs" in body
    if has_instances and has_inputs:
        raise InvalidArgument(
            "Not formatted correctly expecting only one of 'inputs' or 'instances' keys exist"
        )
    if not has_instances and not has_inputs:
        raise InvalidArgument("Missing 'inputs' or 'instances' key")
    return has_instances


def _signature_name(body: Mapping[str, Any]) -> str:
    name = body.get("signature_name", "")
    if not isinstance(name, str):
        raise InvalidArgument("'signature_name' must be a string")
    return name


def _has_non_finite(arrays: Any) -> bool:
    return any(
        array.dtype.kind in "fc" and not np.isfinite(array).all()
        for array in arrays
        if isinstance(array, np.ndarray)
    )
