"""What the gRPC port says about the server: ``grpc.health.v1`` and server reflection.

Health tells the truth, so Kubernetes' gRPC probes (and ``grpc_health_probe``) can rely
on it. These services answer SERVING only while every configured model has a version
AVAILABLE, NOT_SERVING before that, after a model loses its last available version, and
from the moment shutdown begins:

- ``""`` (the whole server), ``tensorflow.serving.PredictionService`` and
  ``inference.GRPCInferenceService`` — the names a probe of a TF Serving or Triton
  deployment asks for;
- each model's own name: SERVING while that model has a version AVAILABLE (a model
  removed by a config reload turns NOT_SERVING).

Statuses are recomputed on every version state change the manager reports.

Reflection (``grpc.reflection.v1alpha``, what ``grpcurl`` uses) lists every gRPC service
the installed adapters registered, plus health and reflection themselves.
"""

from __future__ import annotations

import asyncio
import contextlib

import grpc
from grpc_health.v1 import health, health_pb2
from grpc_reflection.v1alpha import reflection, reflection_pb2

from streamserve.protos._pool import POOL
from streamserve.repository import ModelManager
from streamserve.repository.availability import model_available
from streamserve.server.context import ServerContext

SERVER_SERVICES = ("", "tensorflow.serving.PredictionService", "inference.GRPCInferenceService")
"""Health service names that report the whole server."""

_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def health_statuses(manager: ModelManager) -> dict[str, int]:
    """Service name → health status: the server's names and one per model."""
    per_model = {name: model_available(manager, name) for name in manager.model_names()}
    server_ok = all(per_model.values())
    statuses = dict.fromkeys(SERVER_SERVICES, _SERVING if server_ok else _NOT_SERVING)
    statuses.update({name: _SERVING if ok else _NOT_SERVING for name, ok in per_model.items()})
    return statuses


class HealthReporter:
    """Keeps ``servicer`` in step with ``manager`` (see the module docstring)."""

    def __init__(self, servicer: health.aio.HealthServicer, manager: ModelManager) -> None:
        self._servicer = servicer
        self._manager = manager
        self._known: set[str] = set()
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> None:
        """Publish the current statuses, then follow every version state change."""
        self._loop = asyncio.get_running_loop()
        await self.refresh()
        self._manager.add_listener(self._on_state_change)

    async def refresh(self) -> None:
        statuses = health_statuses(self._manager)
        for gone in self._known - statuses.keys():
            statuses[gone] = _NOT_SERVING
        self._known = set(statuses)
        for service, status in statuses.items():
            await self._servicer.set(service, status)

    def _on_state_change(self, name: str, version: int, state: int, seconds: float | None) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nothing to tell
            asyncio.run_coroutine_threadsafe(self.refresh(), loop)


def enable_reflection(context: ServerContext) -> None:
    """Serve reflection for the registered services (descriptors from our private pool)."""
    for module in (health_pb2, reflection_pb2):
        with contextlib.suppress(TypeError):  # already in the pool
            POOL.AddSerializedFile(module.DESCRIPTOR.serialized_pb)
    names = (
        *context.grpc_services,
        health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
        reflection.SERVICE_NAME,
    )
    server: grpc.aio.Server = context.grpc_server
    reflection.enable_server_reflection(names, server, pool=POOL)
