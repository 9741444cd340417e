"""The 2016 TF Serving Inception example API: ``tensorflow.serving.InceptionService/Classify``.

Classic clients (the Kafka Streams + TF Serving example among them) send one encoded
image and get the top classes and scores back::

    InceptionRequest{bytes jpeg_encoded = 1} → InceptionResponse{repeated float scores = 2;
                                                                repeated string classes = 3}

The request names no model, so the servicer serves one image classifier: the model
named by ``ServerOptions.extra["inception_model_name"]``, else a model called
``inception``, else the only configured model whose default signature takes one
string (encoded image) input and returns ``classes`` and ``scores`` (an image servable
with ``processing.json``). Any encoded image Pillow reads is accepted, not only JPEG.
The ``x-routing-key`` metadata picks a sticky A/B arm, as for the other APIs.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import grpc
import numpy as np

from streamserve.errors import FailedPrecondition, InvalidArgument, StreamserveError
from streamserve.protos.tfs import inception_inference_pb2, inception_inference_pb2_grpc
from streamserve.runtimes.base import DEFAULT_SIGNATURE, Signature
from streamserve.server.context import ServerContext
from streamserve.server.core import InferenceCore, ModelRef
from streamserve.server.grpc_errors import grpc_status

log = logging.getLogger(__name__)

PROTOCOL = "inception"
MODEL_NAME_OPTION = "inception_model_name"
DEFAULT_MODEL_NAME = "inception"
ROUTING_KEY_METADATA = "x-routing-key"
CLASSES, SCORES = "classes", "scores"


def install(context: ServerContext) -> None:
    """Adapter hook called by :class:`streamserve.server.app.Server`."""
    configured = context.options.extra.get(MODEL_NAME_OPTION)
    if configured is not None and not isinstance(configured, str):
        raise InvalidArgument(f"{MODEL_NAME_OPTION} must be a model name, got {configured!r}")
    servicer = InceptionService(context.core, configured)
    inception_inference_pb2_grpc.add_InceptionServiceServicer_to_server(
        servicer, context.grpc_server
    )
    context.grpc_services.append("tensorflow.serving.InceptionService")


class InceptionService(inception_inference_pb2_grpc.InceptionServiceServicer):
    def __init__(self, core: InferenceCore, model_name: str | None = None) -> None:
        self.core = core
        self._configured = model_name

    async def Classify(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        started = time.perf_counter()
        status, name, version = "OK", "", ""
        try:
            name = self._model_name()
            response, version = await self._classify(name, request, context)
            return response
        except StreamserveError as exc:
            status = exc.code.name
            await context.abort(grpc_status(exc.code), exc.message)
        except Exception as exc:
            status = "INTERNAL"
            log.exception("unexpected error in InceptionService.Classify")
            await context.abort(grpc.StatusCode.INTERNAL, f"{type(exc).__name__}: {exc}")
        finally:
            if self.core.observed:
                self.core.observe_request(name, version, PROTOCOL, "classify", status, started)

    async def _classify(
        self, name: str, request: Any, context: grpc.aio.ServicerContext
    ) -> tuple[Any, str]:
        if not request.jpeg_encoded:
            raise InvalidArgument("InceptionRequest.jpeg_encoded is empty: send an encoded image")
        images = np.empty(1, dtype=object)
        images[0] = request.jpeg_encoded
        ref = ModelRef(name, routing_key=_routing_key(context))
        result = await self.core.predict(
            ref, lambda signature: {_image_input(name, signature): images}
        )
        classes, scores = result.outputs.get(CLASSES), result.outputs.get(SCORES)
        if classes is None or scores is None:
            raise FailedPrecondition(
                f"Model {name!r} does not return '{CLASSES}' and '{SCORES}' outputs"
            )
        response = inception_inference_pb2.InceptionResponse()
        response.classes.extend(_text(label) for label in np.asarray(classes).reshape(-1))
        response.scores.extend(np.asarray(scores, dtype=np.float32).reshape(-1).tolist())
        return response, str(result.version)

    def _model_name(self) -> str:
        if self._configured:
            return self._configured
        names = self.core.manager.model_names()
        if DEFAULT_MODEL_NAME in names:
            return DEFAULT_MODEL_NAME
        classifiers = [name for name in names if _is_classifier(self.core, name)]
        if len(classifiers) == 1:
            return classifiers[0]
        found = f"several ({', '.join(classifiers)})" if classifiers else "none"
        raise FailedPrecondition(
            "InceptionService needs one image classifier (string input → classes, scores); "
            f"found {found}: name the model 'inception' or set {MODEL_NAME_OPTION}"
        )


def _default_signature(core: InferenceCore, name: str) -> Signature | None:
    try:
        signatures = core.metadata(ModelRef(name)).signatures
    except StreamserveError:
        return None
    return signatures.get(DEFAULT_SIGNATURE)


def _is_classifier(core: InferenceCore, name: str) -> bool:
    signature = _default_signature(core, name)
    return (
        signature is not None
        and len(signature.inputs) == 1
        and next(iter(signature.inputs.values())).dtype == np.dtype(object)
        and {CLASSES, SCORES} <= set(signature.outputs)
    )


def _image_input(name: str, signature: Signature) -> str:
    if len(signature.inputs) != 1:
        raise FailedPrecondition(
            f"Model {name!r} is not an image classifier: its {signature.name} signature "
            "must take exactly one string input"
        )
    return next(iter(signature.inputs))


def _text(label: object) -> str:
    return label.decode("utf-8", "replace") if isinstance(label, bytes) else str(label)


def _routing_key(context: grpc.aio.ServicerContext) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == ROUTING_KEY_METADATA:
            return value if isinstance(value, str) else value.decode("utf-8", "replace")
    return None
