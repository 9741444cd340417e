"""Health that tells the truth, and fail-fast start-up, like TF Serving.

1. A server whose only model is corrupt exits with status 6 and the model's load error.
2. With ``--allow_partial_start`` it runs, and every health service (``""``,
   ``tensorflow.serving.PredictionService``, ``inference.GRPCInferenceService``, the
   model's name) says NOT_SERVING, as does ``/v2/health/ready``.
3. Once the model is AVAILABLE all of them say SERVING (``grpc_health_probe``-style checks
   through grpcio-health-checking), and server reflection (``grpcurl``'s view, through
   grpcio-reflection's client) lists the services.
4. ``--access_log --log-format json``: one JSON line per request.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from streamserve.cli import EXIT_MODEL_LOAD_FAILED
from streamserve.models.toy import build_tiny
from streamserve.waiting import wait_until
from tests.integration.conftest import ServerProcess

pytestmark = pytest.mark.integration

SERVICES = ("", "tensorflow.serving.PredictionService", "inference.GRPCInferenceService")
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def _corrupt_model(root: Path) -> Path:
    version = root / "broken" / "1"
    version.mkdir(parents=True)
    (version / "model.onnx").write_bytes(b"\x08\x07not an onnx model")
    return version.parent


def _health(server: ServerProcess, service: str) -> int:
    with grpc.insecure_channel(server.grpc_target) as channel:
        request = health_pb2.HealthCheckRequest(service=service)
        reply = health_pb2_grpc.HealthStub(channel).Check(request, timeout=10)
    return int(reply.status)


def test_corrupt_only_model_exits_with_its_load_error(
    serve_process: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    base = _corrupt_model(tmp_path)
    server = serve_process("--model_name=broken", f"--model_base_path={base}")
    assert server.wait(timeout=60) == EXIT_MODEL_LOAD_FAILED
    log = server.log_text()
    assert "error: initial model load failed" in log
    assert "model 'broken': version 1:" in log


def test_partial_start_serves_but_health_says_not_serving(
    serve_process: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    base = _corrupt_model(tmp_path)
    flags = ["--model_name=broken", f"--model_base_path={base}", "--allow_partial_start"]
    server = serve_process(*flags).wait_ready()
    for service in (*SERVICES, "broken"):
        assert _health(server, service) == NOT_SERVING, service
    assert httpx.get(f"{server.rest_url}/v2/health/ready", timeout=10).status_code != 200

    build_tiny(base / "2")  # a good version appears: the poller loads it
    wait_until(lambda: _health(server, "") == SERVING, 60, "health SERVING after a good version")
    for service in (*SERVICES, "broken"):
        assert _health(server, service) == SERVING, service


def test_health_and_reflection_once_the_model_is_available(
    serve_process: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    build_tiny(tmp_path / "t" / "1")
    flags = ["--model_name=t", f"--model_base_path={tmp_path / 't'}"]
    server = serve_process(*flags).wait_ready()
    for service in (*SERVICES, "t"):
        assert _health(server, service) == SERVING, service
    with grpc.insecure_channel(server.grpc_target) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        services = set(database.get_services())
        predict = database.FindFileContainingSymbol("tensorflow.serving.PredictionService")
    assert {
        "tensorflow.serving.PredictionService",
        "tensorflow.serving.ModelService",
        "inference.GRPCInferenceService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    } <= services
    assert predict.name.endswith("prediction_service.proto")


def test_access_log_writes_one_json_line_per_request(
    serve_process: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    build_tiny(tmp_path / "t" / "1")
    flags = ["--model_name=t", f"--model_base_path={tmp_path / 't'}", "--access_log"]
    server = serve_process(*flags, "--log-format", "json").wait_ready()
    body = {"instances": [[0.5] * 64]}
    assert httpx.post(f"{server.rest_url}/v1/models/t:predict", json=body).status_code == 200
    assert httpx.post(f"{server.rest_url}/v1/models/nope:predict", json=body).status_code == 404

    def lines() -> list[dict[str, object]]:
        found = [json.loads(line) for line in server.log_text().splitlines() if '"request"' in line]
        return [entry for entry in found if entry.get("event") == "request"]

    wait_until(lambda: len(lines()) >= 2, 30, "two access log lines")
    ok, missing = lines()[:2]
    assert (ok["model"], ok["version"], ok["protocol"], ok["status"]) == (
        "t",
        "1",
        "tfserving",
        "OK",
    )
    assert (missing["model"], missing["status"]) == ("nope", "NOT_FOUND")
    assert isinstance(ok["latency_ms"], float)
