"""Safe image fetching for records that name their image instead of carrying it.

A record may point at a local file (plain path or ``file://``) or an ``http(s)://`` URL.
Every fetch is bounded and checked, because record values come from whoever can write
to the input topic:

1. the scheme must be allowed (``file``, ``http``, ``https`` by default);
2. a file must resolve (symlinks and ``..`` included, via ``realpath``) inside one of the
   configured ``allowed_roots``; there are no implicit roots (not even the working
   directory), so with none configured every local path and ``file://`` URL is refused.
   A refused, missing or unreadable file gets one and the same reason, so records cannot
   probe which paths exist;
3. a URL's host is resolved once, every resolved address must be public (no loopback,
   private, link-local such as ``169.254.169.254``, multicast or reserved ranges) unless
   the host is in ``allowed_hosts``, or private addresses are allowed (link-local ones stay
   refused even then); the connection then goes to that checked address (DNS pinning), so
   a later lookup cannot swap it;
4. redirects are followed by hand, each hop re-checked as in 1 and 3;
5. at most ``max_bytes`` are read, within ``timeout_s`` overall;
6. the bytes must start with a known image signature, and Pillow must read the header
   (without decoding pixels) with ``width * height <= max_pixels``.

Every refusal raises :class:`~streamserve.stream.errors.RecordError` with stage
``"fetch"`` (``"image"`` for the content checks) and a reason that names the rule.
Reasons never quote the fetched bytes (they end up in DLQ headers and logs).
"""

from __future__ import annotations

import asyncio
import io
import ipaddress
import os
import socket
import stat
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urljoin, urlsplit

import httpx
from PIL import Image

from streamserve.stream.errors import RecordError

FETCH_STAGE = "fetch"
IMAGE_STAGE = "image"

DEFAULT_SCHEMES = frozenset({"file", "http", "https"})
DEFAULT_FORMATS = frozenset({"JPEG", "PNG", "GIF", "BMP", "WEBP", "TIFF"})
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_NAT64 = ipaddress.ip_network("64:ff9b::/96")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class FetchPolicy:
    """What a fetch may touch. Defaults are safe for untrusted records.

    ``allowed_hosts`` lists hosts trusted even when they resolve to private addresses:
    host names (``"images.internal"``), ``"host:port"``, IP addresses or networks
    (``"127.0.0.1"``, ``"10.0.0.0/8"``). Tests and the demo serve images from
    ``127.0.0.1`` and trust it this way (or set ``allow_private_addresses``).

    ``allowed_roots`` lists the directories local files may be read from; empty (the
    default) refuses every local path and ``file://`` URL.
    """

    allowed_schemes: frozenset[str] = DEFAULT_SCHEMES
    allowed_roots: tuple[Path | str, ...] = ()
    max_bytes: int = 20_000_000
    timeout_s: float = 10.0
    connect_timeout_s: float = 5.0
    allow_private_addresses: bool = False
    allowed_hosts: tuple[str, ...] = ()
    max_pixels: int = 40_000_000
    max_redirects: int = 5
    allowed_formats: frozenset[str] = DEFAULT_FORMATS
    max_connections: int = 64

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "allowed_schemes", frozenset(s.lower() for s in self.allowed_schemes)
        )
        if self.max_bytes <= 0 or self.max_pixels <= 0 or self.timeout_s <= 0:
            raise ValueError("max_bytes, max_pixels and timeout_s must be positive")


@dataclass(frozen=True)
class ImageInfo:
    format: str
    width: int
    height: int


# --------------------------------------------------------------------------- image checks

_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
)


def sniff_image_format(data: bytes) -> str | None:
    """The image format named by the leading magic bytes, or ``None``."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    for signature, name in _SIGNATURES:
        if data.startswith(signature):
            return name
    return None


def check_image(
    data: bytes, max_pixels: int = 40_000_000, allowed_formats: Iterable[str] = DEFAULT_FORMATS
) -> ImageInfo:
    """Validate encoded image bytes by signature and header only (no pixel decoding).

    Raises ``RecordError(stage="image")`` for non-images, unsupported formats, unreadable
    headers and images with more than ``max_pixels`` pixels (decompression bombs).
    """
    image_format = sniff_image_format(data)
    if image_format is None:
        # the bytes themselves are never quoted: they may be a file's secret content
        raise RecordError(IMAGE_STAGE, f"not an image (unknown signature, {len(data)} bytes)")
    if image_format not in allowed_formats:
        raise RecordError(IMAGE_STAGE, f"image format {image_format} is not allowed")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=[image_format]) as image:
                width, height = image.size
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise RecordError(IMAGE_STAGE, f"image too large: {exc}", type(exc).__name__) from exc
    except Exception as exc:  # Pillow raises many types for corrupt headers
        raise RecordError(
            IMAGE_STAGE, f"unreadable {image_format} header: {exc}", type(exc).__name__
        ) from exc
    if width * height > max_pixels:
        raise RecordError(
            IMAGE_STAGE,
            f"image has {width}x{height} = {width * height} pixels, limit is {max_pixels}",
        )
    return ImageInfo(image_format, width, height)


# --------------------------------------------------------------------------- address checks


def _unwrap(address: IPAddress) -> IPAddress:
    """The IPv4 address an IPv6 address carries (mapped, 6to4, Teredo, NAT64), else itself."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is None and address.teredo is not None:
            embedded = address.teredo[1]
        if embedded is None and address in _NAT64:
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None:
            return embedded
    return address


def is_public_address(address: IPAddress) -> bool:
    """True for globally routable unicast addresses, looking through IPv6 embeddings."""
    address = _unwrap(address)
    return address.is_global and not address.is_multicast


def address_refusal(address: IPAddress, allow_private: bool) -> str | None:
    """Why ``address`` may not be fetched from, or ``None`` when it may.

    Link-local addresses (169.254.0.0/16 — cloud metadata services live at 169.254.169.254
    — and fe80::/10) stay refused even with ``allow_private``; only an explicit
    ``allowed_hosts`` entry lets them through.
    """
    if is_public_address(address):
        return None
    if _unwrap(address).is_link_local:
        return "link-local"
    return None if allow_private else "non-public"


@dataclass(frozen=True)
class _HostTrust:
    names: frozenset[str] = frozenset()  # "host" or "host:port", lowercase
    networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def parse(cls, entries: Iterable[str]) -> _HostTrust:
        names: set[str] = set()
        networks: list[IPNetwork] = []
        for entry in entries:
            try:
                networks.append(ipaddress.ip_network(entry.strip(), strict=False))
            except ValueError:
                names.add(entry.strip().lower())
        return cls(frozenset(names), tuple(networks))

    def trusts(self, host: str, port: int, addresses: Iterable[IPAddress]) -> bool:
        host = host.lower()
        if host in self.names or f"{host}:{port}" in self.names:
            return True
        addresses = list(addresses)
        return bool(self.networks) and all(
            any(a in net for net in self.networks) for a in addresses
        )


@dataclass(frozen=True)
class _PinnedRequest:
    url: httpx.URL  # host replaced by the checked address
    host_header: str
    sni_hostname: str


# --------------------------------------------------------------------------- fetcher


@dataclass
class ImageFetcher:
    """Fetch image bytes named by a record, under a :class:`FetchPolicy`.

    Safe to use concurrently from one event loop. Owns pooled HTTP clients: close with
    :meth:`close` (or ``async with``).
    """

    policy: FetchPolicy = field(default_factory=FetchPolicy)

    def __post_init__(self) -> None:
        self._roots = tuple(Path(os.path.realpath(root)) for root in self.policy.allowed_roots)
        self._trust = _HostTrust.parse(self.policy.allowed_hosts)
        self._clients: dict[str, httpx.AsyncClient] = {}

    async def __aenter__(self) -> ImageFetcher:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.aclose()

    async def fetch(self, source: str) -> bytes:
        """Return the validated image bytes ``source`` names, or raise ``RecordError``."""
        source = source.strip()
        if not source:
            raise RecordError(FETCH_STAGE, "empty image source")
        try:
            async with asyncio.timeout(self.policy.timeout_s):
                data = await self._fetch_any(source)
        except TimeoutError as exc:
            raise RecordError(
                FETCH_STAGE,
                f"fetching {_describe(source)} took longer than {self.policy.timeout_s}s",
                type(exc).__name__,
            ) from exc
        check_image(data, self.policy.max_pixels, self.policy.allowed_formats)
        return data

    async def _fetch_any(self, source: str) -> bytes:
        scheme = _scheme_of(source)
        self._check_scheme(scheme)
        if scheme == "file":
            path = _file_url_path(source) if source.lower().startswith("file:") else source
            return await asyncio.to_thread(self._read_file, path)
        return await self._fetch_http(source)

    def _check_scheme(self, scheme: str) -> None:
        if scheme not in self.policy.allowed_schemes:
            allowed = ", ".join(sorted(self.policy.allowed_schemes)) or "none"
            raise RecordError(FETCH_STAGE, f"scheme '{scheme}' is not allowed (allowed: {allowed})")

    # ------------------------------------------------------------------ files

    def _read_file(self, path: str) -> bytes:
        # One reason for "outside the roots", "missing", "not a regular file" and "cannot
        # read": a record must not learn which paths exist.
        refused = RecordError(
            FETCH_STAGE,
            f"file {_describe(path)!r} is not readable (missing, not a regular file, "
            "or outside the allowed roots: --fetch-allowed-root)",
        )
        if not self._roots:
            raise refused
        real = Path(os.path.realpath(path))
        if not any(real.is_relative_to(root) for root in self._roots):
            raise refused
        try:
            with open(real, "rb") as handle:
                info = os.fstat(handle.fileno())
                if not stat.S_ISREG(info.st_mode):
                    raise refused
                if info.st_size > self.policy.max_bytes:
                    raise RecordError(FETCH_STAGE, self._too_big(path, info.st_size))
                data = handle.read(self.policy.max_bytes + 1)
        except OSError as exc:
            raise RecordError(FETCH_STAGE, refused.reason, type(exc).__name__) from None
        if len(data) > self.policy.max_bytes:  # the file grew after fstat
            raise RecordError(FETCH_STAGE, self._too_big(path, len(data)))
        return data

    def _too_big(self, what: str, size: int) -> str:
        return f"{_describe(what)} is larger than max_bytes={self.policy.max_bytes} ({size} bytes)"

    # ------------------------------------------------------------------ http(s)

    async def _fetch_http(self, url: str) -> bytes:
        current = url
        for _hop in range(self.policy.max_redirects + 1):
            pinned = await self._pin(current)
            client = self._client(urlsplit(current).scheme.lower())
            try:
                async with client.stream(
                    "GET",
                    pinned.url,
                    headers={"Host": pinned.host_header},
                    extensions={"sni_hostname": pinned.sni_hostname},
                ) as response:
                    if response.status_code in _REDIRECT_STATUSES:
                        current = self._next_hop(current, response)
                        continue
                    if response.status_code != 200:
                        raise RecordError(
                            FETCH_STAGE, f"HTTP {response.status_code} from {_describe(current)}"
                        )
                    return await self._read_body(response, current)
            except httpx.HTTPError as exc:
                raise RecordError(
                    FETCH_STAGE, f"cannot fetch {_describe(current)}: {exc}", type(exc).__name__
                ) from exc
        raise RecordError(
            FETCH_STAGE, f"more than {self.policy.max_redirects} redirects from {_describe(url)}"
        )

    def _next_hop(self, current: str, response: httpx.Response) -> str:
        location: str | None = response.headers.get("location")
        if not location:
            raise RecordError(FETCH_STAGE, f"redirect without Location from {_describe(current)}")
        target = urljoin(current, location)
        scheme = _scheme_of(target)
        if scheme not in ("http", "https"):
            raise RecordError(FETCH_STAGE, f"redirect to scheme '{scheme}' refused")
        self._check_scheme(scheme)
        return target

    async def _pin(self, url: str) -> _PinnedRequest:
        """Resolve the URL's host once, check every address, and aim the request at one."""
        try:
            parts = httpx.URL(url)
        except httpx.InvalidURL as exc:
            raise RecordError(FETCH_STAGE, f"invalid URL: {exc}", type(exc).__name__) from exc
        if not parts.host:
            raise RecordError(FETCH_STAGE, f"URL has no host: {_describe(url)}")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        addresses = await _resolve(parts.host, port)
        if not self._trust.trusts(parts.host, port, addresses):
            for address in addresses:
                refusal = address_refusal(address, self.policy.allow_private_addresses)
                if refusal is not None:
                    raise RecordError(
                        FETCH_STAGE,
                        f"host {parts.host!r} resolves to {refusal} address {address}; "
                        "refused (trust it with allowed_hosts)",
                    )
        return _PinnedRequest(
            url=parts.copy_with(host=str(addresses[0])),
            host_header=parts.netloc.decode("ascii"),
            sni_hostname=parts.host,
        )

    def _client(self, scheme: str) -> httpx.AsyncClient:
        client = self._clients.get(scheme)
        if client is None:
            # HTTPS connections are not kept alive: the pool keys on the pinned address,
            # so a kept TLS connection could serve another host name than it was verified for.
            keepalive = self.policy.max_connections if scheme == "http" else 0
            client = httpx.AsyncClient(
                follow_redirects=False,
                trust_env=False,  # an environment proxy would bypass the address checks
                timeout=httpx.Timeout(self.policy.timeout_s, connect=self.policy.connect_timeout_s),
                limits=httpx.Limits(
                    max_connections=self.policy.max_connections,
                    max_keepalive_connections=keepalive,
                ),
                headers={
                    "Accept": "image/*",
                    "Accept-Encoding": "identity",
                    "User-Agent": "streamserve-fetch",
                },
            )
            self._clients[scheme] = client
        return client

    async def _read_body(self, response: httpx.Response, url: str) -> bytes:
        encoding = response.headers.get("content-encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            raise RecordError(
                FETCH_STAGE, f"compressed response ({encoding}) refused from {_describe(url)}"
            )
        declared = response.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.policy.max_bytes:
            raise RecordError(FETCH_STAGE, self._too_big(url, int(declared)))
        body = bytearray()
        async for chunk in response.aiter_raw():
            body += chunk
            if len(body) > self.policy.max_bytes:
                raise RecordError(FETCH_STAGE, self._too_big(url, len(body)))
        return bytes(body)


# --------------------------------------------------------------------------- helpers


def _scheme_of(source: str) -> str:
    scheme = urlsplit(source).scheme.lower()
    # One letter is a Windows drive ("C:\\img.jpg"), no scheme at all means a path.
    return scheme if len(scheme) > 1 else "file"


def _file_url_path(url: str) -> str:
    parts = urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        raise RecordError(FETCH_STAGE, f"file URL with remote host {parts.netloc!r} refused")
    return unquote(parts.path)


async def _resolve(host: str, port: int) -> list[IPAddress]:
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise RecordError(
            FETCH_STAGE, f"cannot resolve host {host!r}: {exc}", type(exc).__name__
        ) from exc
    addresses: list[IPAddress] = []
    for _family, _type, _proto, _name, sockaddr in infos:
        address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise RecordError(FETCH_STAGE, f"host {host!r} has no addresses")
    return addresses


def _describe(source: str, limit: int = 200) -> str:
    """The source without query string or credentials, shortened for error messages."""
    try:
        parts = urlsplit(source)
        if parts.scheme and len(parts.scheme) > 1:
            port = f":{parts.port}" if parts.port else ""
            text = f"{parts.scheme}://{parts.hostname or ''}{port}{parts.path}"
        else:
            text = source
    except ValueError:  # e.g. a port that is not a number
        text = source
    return text if len(text) <= limit else text[: limit - 3] + "..."
