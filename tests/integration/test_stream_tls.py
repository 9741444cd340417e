"""The remote stream processor over TLS: 1,000 records → 1,000 correct outputs, exactly once.

- TF Serving gRPC over mutual TLS (``grpcs://`` + CA, client certificate and key) against
  ``serve --ssl_config_file`` with ``client_verify: true``;
- TF Serving REST over HTTPS with a bearer header, through a gateway (in this test) that
  refuses requests without ``Authorization: Bearer <token>``; the token comes from the
  environment (``{env:MODEL_TOKEN}``) and is not on the processor's command line.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import numpy as np
import pytest
from aiohttp import web

from streamserve.models.toy import build_tiny
from streamserve.processes import LOCALHOST, free_port
from streamserve.testing import StreamProcess, produce, read_topic
from tests.helpers import Certificates, make_certificates
from tests.integration.conftest import ServerProcess

pytestmark = pytest.mark.integration

RECORDS = 1000
PARTITIONS = 2
WIDTH = 64
TOKEN = "s3cret-token-for-the-gateway"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("models") / "tiny"
    build_tiny(base / "1", width=WIDTH)
    return base


@pytest.fixture(scope="module")
def mtls_server(
    serve_process_module: Callable[..., ServerProcess], certs: Certificates, tiny: Path
) -> ServerProcess:
    config = tiny.parent / "ssl.config"
    config.write_text(certs.ssl_config(client_verify=True))
    flags = ["--model_name=tiny", f"--model_base_path={tiny}", f"--ssl_config_file={config}"]
    return serve_process_module(*flags).wait_ready()


@dataclass
class Gateway:
    """An HTTPS gateway that forwards to the model server only with the right bearer."""

    url: str
    accepted: int = 0
    refused: list[str] = field(default_factory=list)


def _client_context(certs: Certificates) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(certs.ca))
    context.load_cert_chain(str(certs.client_cert), str(certs.client_key))
    return context


async def _serve_gateway(
    gateway: Gateway, upstream: str, certs: Certificates, port: int, stop: asyncio.Event
) -> None:
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=_client_context(certs)))

    async def forward(request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            gateway.refused.append(request.path)
            return web.json_response({"error": "unauthenticated"}, status=401)
        gateway.accepted += 1
        body = await request.read()
        headers = {"Content-Type": request.headers.get("Content-Type", "application/json")}
        url = upstream + request.path_qs
        async with session.request(request.method, url, data=body, headers=headers) as reply:
            payload = await reply.read()
            kept = {k: v for k, v in reply.headers.items() if k.lower().startswith("x-model")}
            return web.Response(status=reply.status, body=payload, headers=kept)

    app = web.Application()
    app.router.add_route("*", "/{path:.*}", forward)
    runner = web.AppRunner(app)
    await runner.setup()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(str(certs.server_cert), str(certs.server_key))
    await web.TCPSite(runner, LOCALHOST, port, ssl_context=server_context).start()
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
        await session.close()


@pytest.fixture
def gateway(mtls_server: ServerProcess, certs: Certificates) -> Iterator[Gateway]:
    port = free_port()
    found = Gateway(f"https://{LOCALHOST}:{port}")
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    upstream = f"https://{LOCALHOST}:{mtls_server.rest_port}"
    thread = threading.Thread(
        target=loop.run_until_complete,
        args=(_serve_gateway(found, upstream, certs, port, stop),),
        name="test-gateway",
    )
    thread.start()
    try:
        yield found
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(30)
        with contextlib.suppress(RuntimeError):
            loop.close()


def _inputs() -> tuple[list[tuple[int, bytes, bytes]], dict[int, np.ndarray]]:
    rng = np.random.default_rng(3)
    records, rows = [], {}
    for i in range(RECORDS):
        rows[i] = rng.standard_normal((1, WIDTH)).astype(np.float32).round(4)
        value = json.dumps({"id": i, "inputs": {"x": rows[i].tolist()}}).encode()
        records.append((i % PARTITIONS, f"k{i}".encode(), value))
    return records, rows


def _run_stream(
    kafka_bootstrap: str,
    topic_factory: Callable[..., str],
    log_path: Path,
    model_args: list[str],
    env: dict[str, str] | None = None,
) -> tuple[list[dict], dict[int, np.ndarray], StreamProcess]:
    source, sink = topic_factory(PARTITIONS, "in"), topic_factory(PARTITIONS, "out")
    records, rows = _inputs()
    produce(kafka_bootstrap, source, records)
    args = [
        *("--bootstrap-servers", kafka_bootstrap, "--input-topic", source),
        *("--output-topic", sink, "--group-id", f"g-{source}", "--instance-id", "tls-1"),
        *("--model-name", "tiny", *model_args),
    ]
    with StreamProcess(args, log_path, env=env) as stream:
        stream.wait_ready()
        cmdline = Path(f"/proc/{stream.pid}/cmdline").read_bytes()
        outputs = [record.json() for record in read_topic(kafka_bootstrap, sink, RECORDS, 120)]
    assert TOKEN.encode() not in cmdline
    return outputs, rows, stream


def _assert_exactly_once_and_correct(
    outputs: list[dict], rows: dict[int, np.ndarray], tiny: Path
) -> None:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(tiny / "1" / "model.onnx"))
    assert len(outputs) == RECORDS
    assert sorted(document["id"] for document in outputs) == list(range(RECORDS))
    for document in outputs:
        assert document["mode"] == "remote"
        expected = session.run(None, {"x": rows[document["id"]]})[0]
        np.testing.assert_allclose(np.array(document["outputs"]["y"]), expected, atol=1e-4)


def test_remote_grpc_over_mutual_tls(
    mtls_server: ServerProcess,
    certs: Certificates,
    tiny: Path,
    kafka_bootstrap: str,
    topic_factory: Callable[..., str],
    tmp_path: Path,
) -> None:
    model_args = [
        *("--model-server", f"grpcs://{mtls_server.grpc_target}"),
        *("--model-server-ca", str(certs.ca)),
        *("--model-server-cert", str(certs.client_cert)),
        *("--model-server-key", str(certs.client_key)),
    ]
    outputs, rows, _ = _run_stream(
        kafka_bootstrap, topic_factory, tmp_path / "stream.log", model_args
    )
    _assert_exactly_once_and_correct(outputs, rows, tiny)


def test_remote_rest_over_https_with_a_bearer_header_from_the_environment(
    gateway: Gateway,
    certs: Certificates,
    tiny: Path,
    kafka_bootstrap: str,
    topic_factory: Callable[..., str],
    tmp_path: Path,
) -> None:
    model_args = [
        *("--model-server", gateway.url, "--model-server-ca", str(certs.ca)),
        *("--model-server-header", "Authorization=Bearer {env:MODEL_TOKEN}"),
    ]
    outputs, rows, _ = _run_stream(
        kafka_bootstrap,
        topic_factory,
        tmp_path / "stream.log",
        model_args,
        env={"MODEL_TOKEN": TOKEN},
    )
    _assert_exactly_once_and_correct(outputs, rows, tiny)
    assert gateway.accepted > 0 and gateway.refused == []
