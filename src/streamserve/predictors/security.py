"""How a remote predictor reaches a secured model server: TLS and request headers.

``grpcs://host:port`` and ``https://host:port`` targets use TLS: the server is verified
against ``ca`` (PEM; default: the system's trust store) and, for mutual TLS, the client
presents ``cert`` + ``key``. ``headers`` go with every request, as gRPC metadata
(lower-cased names) or HTTP headers — for an API gateway's or a mesh's authentication.

A header value may name where its secret lives so tokens stay off the command line:
``{env:NAME}`` is replaced by environment variable ``NAME`` and ``{file:PATH}`` by the
file's content (surrounding whitespace stripped), e.g.
``authorization=Bearer {file:/var/run/secrets/token}``. Errors name the variable or file,
never a value.
"""

from __future__ import annotations

import os
import re
import ssl
from dataclasses import dataclass
from pathlib import Path

import grpc

from streamserve.errors import InvalidArgument

_PLACEHOLDER = re.compile(r"\{(env|file):([^{}]+)\}")
_HEADER_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")


@dataclass(frozen=True)
class ClientSecurity:
    """PEM bytes for TLS (``ca``: roots to trust, ``cert``/``key``: the client's pair for
    mutual TLS) and the headers sent with every request. See the module docstring."""

    ca: bytes | None = None
    cert: bytes | None = None
    key: bytes | None = None
    headers: tuple[tuple[str, str], ...] = ()

    @classmethod
    def from_files(
        cls,
        ca_file: str | Path | None = None,
        cert_file: str | Path | None = None,
        key_file: str | Path | None = None,
        headers: tuple[str, ...] | list[str] = (),
    ) -> ClientSecurity:
        if (cert_file is None) != (key_file is None):
            raise InvalidArgument("a client certificate needs its key, and a key its certificate")
        return cls(
            ca=_read_pem(ca_file, "CA"),
            cert=_read_pem(cert_file, "client certificate"),
            key=_read_pem(key_file, "client key"),
            headers=tuple(parse_header(text) for text in headers),
        )

    def grpc_credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(self.ca, self.key, self.cert)

    def ssl_context(self) -> ssl.SSLContext:
        """A client context: verifies the server against ``ca`` (or the system roots)."""
        context = ssl.create_default_context(cadata=self.ca.decode() if self.ca else None)
        if self.cert is not None and self.key is not None:
            _load_pair(context, self.cert, self.key)
        return context

    def grpc_metadata(self) -> tuple[tuple[str, str], ...]:
        return tuple((name.lower(), value) for name, value in self.headers)


PLAINTEXT = ClientSecurity()


def parse_header(text: str) -> tuple[str, str]:
    """``"NAME=VALUE"`` → ``(NAME, VALUE)`` with ``{env:..}``/``{file:..}`` resolved."""
    name, sep, value = text.partition("=")
    name = name.strip()
    if not sep or not _HEADER_NAME.match(name):
        raise InvalidArgument(f"--model-server-header expects NAME=VALUE, got name {name!r}")
    resolved = _PLACEHOLDER.sub(lambda match: _secret(match[1], match[2], name), value.strip())
    if "\n" in resolved or "\r" in resolved:
        raise InvalidArgument(f"--model-server-header {name}: the value spans several lines")
    return name, resolved


def _secret(kind: str, where: str, header: str) -> str:
    if kind == "env":
        value = os.environ.get(where)
        if value is None:
            raise InvalidArgument(f"header {header}: environment variable {where} is not set")
        return value.strip()
    try:
        return Path(where).read_text().strip()
    except OSError as exc:
        raise InvalidArgument(f"header {header}: cannot read {where}: {exc.strerror}") from None


def _read_pem(path: str | Path | None, what: str) -> bytes | None:
    if path is None:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise InvalidArgument(f"cannot read the {what} file {path}: {exc.strerror}") from None


def _load_pair(context: ssl.SSLContext, cert: bytes, key: bytes) -> None:
    """``load_cert_chain`` reads files only: go through a private temporary folder."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="streamserve-client-tls-") as folder:
        cert_path, key_path = Path(folder, "cert.pem"), Path(folder, "key.pem")
        key_path.touch(mode=0o600)
        key_path.write_bytes(key)
        cert_path.write_bytes(cert)
        try:
            context.load_cert_chain(cert_path, key_path)
        except ssl.SSLError as exc:
            raise InvalidArgument(f"unusable client certificate/key: {exc.reason}") from None
