"""Issue 12, defect 5: REST connection limits (header/body timeouts, header size and count).

A real server (in-process, real sockets) with small limits: slow-loris clients that send
a partial header (or a partial body) slowly are disconnected after the header (body)
timeout, idle connections too; an oversize header block and too many header fields get
431 and the connection is closed; other clients are served all along.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from streamserve.models.toy import build_multi
from streamserve.server.app import Server, ServerOptions
from streamserve.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

HEADER_TIMEOUT_S = 1.0
BODY_TIMEOUT_S = 1.0
MAX_HEADER_BYTES = 8 * 1024
MAX_HEADERS = 20
GENEROUS_S = 20.0  # a bound for "is disconnected", far above the configured timeouts


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    base = tmp_path_factory.mktemp("rest-limits") / "m"
    build_multi(base / "1")
    options = ServerOptions(
        model_name="m",
        model_base_path=base,
        host="127.0.0.1",
        enable_model_warmup=False,
        rest_api_header_timeout_seconds=HEADER_TIMEOUT_S,
        rest_api_body_timeout_seconds=BODY_TIMEOUT_S,
        rest_api_max_header_bytes=MAX_HEADER_BYTES,
        rest_api_max_headers=MAX_HEADERS,
    )
    with Server(options) as running:
        yield running


def _connect(server: Server) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.rest_port or 0), timeout=GENEROUS_S)
    sock.settimeout(0.05)
    return sock


def _serves(server: Server) -> bool:
    reply = httpx.get(f"http://127.0.0.1:{server.rest_port}/v2/health/live", timeout=10)
    return reply.status_code == 200


class _Client:
    """A raw connection that keeps trickling bytes and notices when the server closes."""

    def __init__(self, server: Server, first: bytes) -> None:
        self.sock = _connect(server)
        self.sock.sendall(first)
        self.received = b""
        self.closed = False

    def trickle(self, data: bytes) -> bool:
        """Send ``data`` (if still open), read what came back; True once closed."""
        if not self.closed:
            try:
                self.sock.sendall(data)
                chunk = self.sock.recv(65536)
                self.received += chunk
                self.closed = chunk == b""
            except TimeoutError:
                pass
            except OSError:  # reset or broken pipe: the server closed it
                self.closed = True
        return self.closed

    def close(self) -> None:
        self.sock.close()


def _slow_clients(server: Server, first: bytes, count: int) -> list[_Client]:
    return [_Client(server, first) for _ in range(count)]


def test_slow_loris_headers_are_disconnected(server: Server) -> None:
    clients = _slow_clients(server, b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n", 20)
    try:
        wait_until(
            lambda: all([client.trickle(b"X-a: b\r\n"[:1]) for client in clients]),
            GENEROUS_S,
            "slow-loris connections closed by the server",
            interval=0.1,
        )
        assert _serves(server)
    finally:
        for client in clients:
            client.close()
    answered = [c.received for c in clients if c.received]
    assert all(r.startswith(b"HTTP/1.1 408") for r in answered), answered[:1]


def test_idle_connections_are_disconnected(server: Server) -> None:
    clients = _slow_clients(server, b"", 5)
    try:
        wait_until(
            lambda: all([client.trickle(b"") for client in clients]),
            GENEROUS_S,
            "idle connections closed by the server",
            interval=0.1,
        )
    finally:
        for client in clients:
            client.close()
    assert _serves(server)


def test_slow_body_is_disconnected(server: Server) -> None:
    head = (
        b"POST /v2/models/m/infer HTTP/1.1\r\nHost: x\r\n"
        b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"
    )
    clients = _slow_clients(server, head, 5)
    try:
        wait_until(
            lambda: all([client.trickle(b" ") for client in clients]),
            GENEROUS_S,
            "slow-body connections closed by the server",
            interval=0.1,
        )
        assert _serves(server)
    finally:
        for client in clients:
            client.close()
    answered = [c.received for c in clients if c.received]
    assert all(r.startswith(b"HTTP/1.1 408") for r in answered), answered[:1]


def _send_and_read(server: Server, request: bytes) -> bytes:
    sock = _connect(server)
    sock.settimeout(GENEROUS_S)
    received = b""
    try:
        with contextlib.suppress(OSError):  # the server may close before we finish sending
            sock.sendall(request)
        while True:
            try:
                chunk = sock.recv(65536)
            except OSError:
                break
            if not chunk:
                break
            received += chunk
    finally:
        sock.close()
    return received


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nX-Big: "
        + b"a" * (8 * 1024 * 1024)
        + b"\r\n\r\n",
        b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n",
        b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n"
        + b"".join(b"X-%d: v\r\n" % i for i in range(100_000))
        + b"\r\n",
        b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n"
        + b"".join(b"X-%d: v\r\n" % i for i in range(MAX_HEADERS + 1))
        + b"\r\n",
        b"GET /v2/health/live?" + b"q" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    ],
    ids=["8MB-header", "9kB-header", "100k-headers", "21-headers", "9kB-url"],
)
def test_oversize_headers_get_431_and_the_server_goes_on(
    server: Server, request_bytes: bytes
) -> None:
    received = _send_and_read(server, request_bytes)
    assert received == b"" or received.startswith(b"HTTP/1.1 431"), received[:200]
    assert b"200 OK" not in received
    assert _serves(server)


def test_requests_within_the_limits_are_served(server: Server) -> None:
    headers = {f"x-h{i}": "v" * 100 for i in range(MAX_HEADERS - 10)}  # httpx adds ~7
    url = f"http://127.0.0.1:{server.rest_port}/v1/models/m:predict"
    row = {"instances": [{"x": [1, 2, 3, 4], "ids": [1, 2], "names": "a"}]}
    reply = httpx.post(url, json=row, headers=headers, timeout=10)
    assert reply.status_code == 200, reply.text
    with httpx.Client(timeout=10) as client:  # keep-alive: several requests, one connection
        for _ in range(3):
            assert client.post(url, json=row).status_code == 200


def test_limits_have_serve_flags(tmp_path: Path) -> None:
    import argparse

    from streamserve.server.cli import configure, options_from_args

    parser = argparse.ArgumentParser()
    configure(parser)
    args = parser.parse_args(
        [
            "--model_base_path=/m",
            "--rest_api_header_timeout_seconds=2.5",
            "--rest-api-body-timeout-seconds=7",
            "--rest_api_max_header_bytes=4096",
            "--rest_api_max_headers=10",
        ]
    )
    options = options_from_args(args)
    assert options.rest_api_header_timeout_seconds == 2.5
    assert options.rest_api_body_timeout_seconds == 7.0
    assert (options.rest_api_max_header_bytes, options.rest_api_max_headers) == (4096, 10)
    defaults = options_from_args(parser.parse_args(["--model_base_path=/m"]))
    assert defaults.rest_api_header_timeout_seconds == 10.0
    assert defaults.rest_api_body_timeout_seconds == 60.0
    assert (defaults.rest_api_max_header_bytes, defaults.rest_api_max_headers) == (32768, 100)
