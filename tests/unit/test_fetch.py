"""Safe image fetching: files under allowed roots, HTTP with address checks, image limits."""

from __future__ import annotations

import asyncio
import io
import ipaddress
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from streamserve.stream.errors import RecordError
from streamserve.stream.fetch import (
    FetchPolicy,
    ImageFetcher,
    check_image,
    is_public_address,
    sniff_image_format,
)


def _png(width: int = 8, height: int = 6) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (10, 200, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width x height`` with no real pixel data."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00"))
        + chunk(b"IEND", b"")
    )


PNG = _png()
BOMB = _png_header_only(10_000, 5_000)  # 50 megapixels
Route = Callable[[BaseHTTPRequestHandler], None]


def _send(handler: BaseHTTPRequestHandler, status: int, body: bytes = b"", **headers: str) -> None:
    handler.send_response(status)
    for name, value in headers.items():
        handler.send_header(name.replace("_", "-"), value)
    if "Content_Length" not in headers:
        handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


def _chunked_forever(handler: BaseHTTPRequestHandler) -> None:
    handler.send_response(200)
    handler.send_header("Transfer-Encoding", "chunked")
    handler.end_headers()
    block = PNG + b"\x00" * 65536
    try:
        for _ in range(64):
            handler.wfile.write(f"{len(block):x}\r\n".encode() + block + b"\r\n")
        handler.wfile.write(b"0\r\n\r\n")
    except (BrokenPipeError, ConnectionResetError):
        pass


ROUTES: dict[str, Route] = {
    "/ok.png": lambda h: _send(h, 200, PNG, Content_Type="image/png"),
    "/missing.png": lambda h: _send(h, 404, b"nope"),
    "/text": lambda h: _send(h, 200, b"hello, not an image"),
    "/bomb.png": lambda h: _send(h, 200, BOMB),
    "/huge-declared": lambda h: _send(h, 200, PNG, Content_Length="999999999"),
    "/huge-chunked": _chunked_forever,
    "/gzip": lambda h: _send(h, 200, zlib.compress(PNG), Content_Encoding="gzip"),
    "/to-metadata": lambda h: _send(h, 302, Location="http://169.254.169.254/latest/meta-data/"),
    "/to-ok": lambda h: _send(h, 301, Location="/ok.png"),
    "/to-file": lambda h: _send(h, 302, Location="file:///etc/passwd"),
    "/loop": lambda h: _send(h, 302, Location="/loop"),
    "/slow": lambda h: (time.sleep(3), _send(h, 200, PNG)),
}


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        route = ROUTES.get(self.path)
        if route is None:
            _send(self, 404)
        else:
            route(self)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def server_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _fetch(source: str, **policy: object) -> bytes:
    async def go() -> bytes:
        async with ImageFetcher(FetchPolicy(**policy)) as fetcher:  # type: ignore[arg-type]
            return await fetcher.fetch(source)

    return asyncio.run(go())


def _refused(source: str, **policy: object) -> RecordError:
    with pytest.raises(RecordError) as info:
        _fetch(source, **policy)
    return info.value


TRUST_LOCAL = {"allowed_hosts": ("127.0.0.1",)}


# ------------------------------------------------------------------ http


def test_http_image_from_trusted_host(server_url: str) -> None:
    assert _fetch(f"{server_url}/ok.png", **TRUST_LOCAL) == PNG


def test_http_network_allowlist_and_allow_private(server_url: str) -> None:
    assert _fetch(f"{server_url}/ok.png", allowed_hosts=("127.0.0.0/8",)) == PNG
    assert _fetch(f"{server_url}/ok.png", allow_private_addresses=True) == PNG


def test_loopback_refused_by_default(server_url: str) -> None:
    error = _refused(f"{server_url}/ok.png")
    assert error.stage == "fetch"
    assert "non-public address 127.0.0.1" in error.reason


def test_http_404(server_url: str) -> None:
    assert "HTTP 404" in _refused(f"{server_url}/missing.png", **TRUST_LOCAL).reason


def test_redirect_to_metadata_address_refused(server_url: str) -> None:
    error = _refused(f"{server_url}/to-metadata", **TRUST_LOCAL)
    assert "link-local address 169.254.169.254" in error.reason


def test_metadata_address_refused_even_with_private_allowed(server_url: str) -> None:
    error = _refused(f"{server_url}/to-metadata", allow_private_addresses=True)
    assert "link-local address 169.254.169.254" in error.reason
    error = _refused("http://169.254.169.254/latest/meta-data/", allow_private_addresses=True)
    assert "link-local" in error.reason
    error = _refused("http://[fe80::1]/x.png", allow_private_addresses=True)
    assert "link-local" in error.reason


def test_redirect_followed_and_rechecked(server_url: str) -> None:
    assert _fetch(f"{server_url}/to-ok", **TRUST_LOCAL) == PNG


def test_redirect_to_file_scheme_refused(server_url: str) -> None:
    assert "scheme 'file'" in _refused(f"{server_url}/to-file", **TRUST_LOCAL).reason


def test_redirect_loop_bounded(server_url: str) -> None:
    assert "redirects" in _refused(f"{server_url}/loop", **TRUST_LOCAL, max_redirects=3).reason


def test_oversize_declared_and_streamed(server_url: str) -> None:
    assert "max_bytes" in _refused(f"{server_url}/huge-declared", **TRUST_LOCAL).reason
    error = _refused(f"{server_url}/huge-chunked", **TRUST_LOCAL, max_bytes=200_000)
    assert "max_bytes=200000" in error.reason


def test_compressed_body_refused(server_url: str) -> None:
    assert "compressed" in _refused(f"{server_url}/gzip", **TRUST_LOCAL).reason


def test_non_image_refused(server_url: str) -> None:
    error = _refused(f"{server_url}/text", **TRUST_LOCAL)
    assert error.stage == "image" and "not an image" in error.reason


def test_50_megapixel_png_refused(server_url: str) -> None:
    error = _refused(f"{server_url}/bomb.png", **TRUST_LOCAL)
    assert error.stage == "image"
    assert "10000x5000" in error.reason and "40000000" in error.reason


def test_timeout(server_url: str) -> None:
    error = _refused(f"{server_url}/slow", **TRUST_LOCAL, timeout_s=0.5)
    assert "longer than 0.5s" in error.reason or "timed out" in error.reason.lower()


def test_connection_refused_is_record_error() -> None:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    error = _refused(f"http://127.0.0.1:{port}/x.png", **TRUST_LOCAL)
    assert error.stage == "fetch" and error.exception_name


def test_unresolvable_host() -> None:
    assert "cannot resolve" in _refused("http://no-such-host.invalid/x.png").reason


def test_disallowed_scheme() -> None:
    assert "scheme 'ftp'" in _refused("ftp://example.com/x.png").reason
    assert (
        "scheme 'https'"
        in _refused("https://example.com/x.png", allowed_schemes=frozenset({"file"})).reason
    )


# ------------------------------------------------------------------ files


@pytest.fixture()
def image_root(tmp_path: Path) -> Path:
    root = tmp_path / "images"
    root.mkdir()
    (root / "cat.png").write_bytes(PNG)
    (tmp_path / "secret.png").write_bytes(PNG)
    (root / "escape.png").symlink_to(tmp_path / "secret.png")
    return root


def test_file_inside_root(image_root: Path) -> None:
    policy = {"allowed_roots": (image_root,)}
    assert _fetch(str(image_root / "cat.png"), **policy) == PNG
    assert _fetch((image_root / "cat.png").as_uri(), **policy) == PNG


def test_file_escapes_refused(image_root: Path) -> None:
    policy = {"allowed_roots": (image_root,)}
    for source in (
        str(image_root / ".." / "secret.png"),
        str(image_root / "escape.png"),
        "/etc/passwd",
    ):
        assert "outside the allowed roots" in _refused(source, **policy).reason


def test_no_implicit_roots_not_even_the_working_directory(
    image_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(image_root)
    for source in ("cat.png", str(image_root / "cat.png"), (image_root / "cat.png").as_uri()):
        assert "outside the allowed roots" in _refused(source).reason
    monkeypatch.chdir("/")
    for source in ("/etc/passwd", "file:///etc/passwd", "etc/passwd", "/proc/self/cmdline"):
        error = _refused(source)
        assert error.stage == "fetch" and "root:" not in error.reason


def test_relative_path_under_an_allowed_root(
    image_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(image_root)
    assert _fetch("cat.png", allowed_roots=(image_root,)) == PNG
    assert "outside" in _refused("../secret.png", allowed_roots=(image_root,)).reason


def test_missing_and_refused_files_get_the_same_reason(image_root: Path) -> None:
    missing, outside = str(image_root / "nope.png"), str(image_root.parent / "secret.png")
    reasons = {
        _refused(source, allowed_roots=(image_root,)).reason.replace(source, "X")
        for source in (missing, outside)
    }
    assert len(reasons) == 1, reasons


def test_not_an_image_reason_quotes_no_bytes(image_root: Path) -> None:
    (image_root / "secret.txt").write_bytes(b"root:x:0:0:root:/root:/bin/bash\n")
    error = _refused(str(image_root / "secret.txt"), allowed_roots=(image_root,))
    assert error.stage == "image" and "not an image" in error.reason
    assert "root" not in error.reason.replace(str(image_root), "")


def test_missing_file_and_directory(image_root: Path) -> None:
    policy = {"allowed_roots": (image_root,)}
    assert "not readable" in _refused(str(image_root / "nope.png"), **policy).reason
    assert _refused(str(image_root), **policy).stage == "fetch"


def test_file_too_big(image_root: Path) -> None:
    policy = {"allowed_roots": (image_root,), "max_bytes": 10}
    assert "max_bytes=10" in _refused(str(image_root / "cat.png"), **policy).reason


def test_file_scheme_can_be_disabled(image_root: Path) -> None:
    policy = {"allowed_roots": (image_root,), "allowed_schemes": frozenset({"https"})}
    assert "scheme 'file'" in _refused(str(image_root / "cat.png"), **policy).reason


def test_file_url_with_remote_host_refused() -> None:
    assert "remote host" in _refused("file://evil.example/etc/passwd").reason


# ------------------------------------------------------------------ pure checks


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("8.8.8.8", True),
        ("2001:4860:4860::8888", True),
        ("127.0.0.1", False),
        ("10.1.2.3", False),
        ("192.168.0.1", False),
        ("169.254.169.254", False),
        ("224.0.0.1", False),
        ("0.0.0.0", False),
        ("::1", False),
        ("fe80::1", False),
        ("::ffff:169.254.169.254", False),
        ("2002:a9fe:a9fe::1", False),  # 6to4 wrapping 169.254.169.254
        ("64:ff9b::a9fe:a9fe", False),  # NAT64 wrapping 169.254.169.254
    ],
)
def test_is_public_address(address: str, public: bool) -> None:
    assert is_public_address(ipaddress.ip_address(address)) is public


def test_check_image_formats() -> None:
    info = check_image(PNG)
    assert (info.format, info.width, info.height) == ("PNG", 8, 6)
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buffer, format="JPEG")
    assert sniff_image_format(buffer.getvalue()) == "JPEG"
    with pytest.raises(RecordError, match="format GIF is not allowed"):
        gif = io.BytesIO()
        Image.new("P", (4, 4)).save(gif, format="GIF")
        check_image(gif.getvalue(), allowed_formats={"PNG", "JPEG"})
    with pytest.raises(RecordError, match="unreadable PNG header"):
        check_image(PNG[:20])
    with pytest.raises(RecordError, match="pixels"):
        check_image(PNG, max_pixels=47)
