"""TLS for both server ports, configured like ``tensorflow_model_server --ssl_config_file``.

The file is TF Serving's ``SSLConfig`` text proto; its fields hold PEM *contents*, not paths::

    server_key: "-----BEGIN PRIVATE KEY-----\\n..."
    server_cert: "-----BEGIN CERTIFICATE-----\\n..."
    custom_ca: "-----BEGIN CERTIFICATE-----\\n..."   # CA that signs client certificates
    client_verify: true                               # mutual TLS: clients must present one

The gRPC port uses it through ``grpc.ssl_server_credentials``; the REST port serves HTTPS
with the same certificate (and the same client verification).
"""

from __future__ import annotations

import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, message_factory, text_format

from streamserve.errors import InvalidArgument
from streamserve.protos._pool import POOL

_SSL_CONFIG_FIELDS = (
    ("server_key", descriptor_pb2.FieldDescriptorProto.TYPE_STRING),
    ("server_cert", descriptor_pb2.FieldDescriptorProto.TYPE_STRING),
    ("custom_ca", descriptor_pb2.FieldDescriptorProto.TYPE_STRING),
    ("client_verify", descriptor_pb2.FieldDescriptorProto.TYPE_BOOL),
)


@dataclass(frozen=True)
class TlsConfig:
    """PEM contents of the server key and certificate, the client CA, and whether a
    client certificate is required."""

    server_key: str
    server_cert: str
    custom_ca: str = ""
    client_verify: bool = False

    def grpc_credentials(self) -> grpc.ServerCredentials:
        pair = [(self.server_key.encode(), self.server_cert.encode())]
        ca = self.custom_ca.encode() or None
        return grpc.ssl_server_credentials(pair, ca, require_client_auth=self.client_verify)

    def ssl_context(self) -> ssl.SSLContext:
        """A server-side context for the REST port (HTTP/1.1 over TLS)."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        with tempfile.TemporaryDirectory(prefix="streamserve-tls-") as folder:
            key, cert = Path(folder, "key.pem"), Path(folder, "cert.pem")
            key.touch(mode=0o600)
            key.write_text(self.server_key)
            cert.write_text(self.server_cert)
            try:
                context.load_cert_chain(cert, key)
            except ssl.SSLError as exc:
                message = f"ssl config: unusable server_key/server_cert: {exc.reason}"
                raise InvalidArgument(message) from None
        if self.custom_ca:
            context.load_verify_locations(cadata=self.custom_ca)
        context.verify_mode = ssl.CERT_REQUIRED if self.client_verify else ssl.CERT_NONE
        return context


def load_ssl_config_file(path: str | Path) -> TlsConfig:
    """Read TF Serving's ``SSLConfig`` text proto; a bad file raises :class:`InvalidArgument`
    naming it (never quoting the key)."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise InvalidArgument(f"cannot read --ssl_config_file {path}: {exc.strerror}") from None
    return parse_ssl_config(text, str(path))


def parse_ssl_config(text: str, where: str = "ssl config") -> TlsConfig:
    message = _ssl_config_class()()
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as exc:
        raise InvalidArgument(f"{where}: not an SSLConfig text proto: {exc}") from None
    config = TlsConfig(
        server_key=message.server_key,
        server_cert=message.server_cert,
        custom_ca=message.custom_ca,
        client_verify=message.client_verify,
    )
    if not config.server_key or not config.server_cert:
        raise InvalidArgument(f"{where}: server_key and server_cert are required")
    if config.client_verify and not config.custom_ca:
        raise InvalidArgument(f"{where}: client_verify needs custom_ca (the clients' CA)")
    return config


def _ssl_config_class() -> Any:
    """TF Serving's ``tensorflow.serving.SSLConfig``, built in our private pool."""
    name = "tensorflow.serving.SSLConfig"
    try:
        return message_factory.GetMessageClass(POOL.FindMessageTypeByName(name))
    except KeyError:
        pass
    file = descriptor_pb2.FileDescriptorProto(
        name="tensorflow_serving/config/ssl_config.proto", package="tensorflow.serving"
    )
    message = file.message_type.add(name="SSLConfig")
    for number, (field_name, field_type) in enumerate(_SSL_CONFIG_FIELDS, start=1):
        message.field.add(
            name=field_name,
            number=number,
            type=field_type,
            label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL,
        )
    POOL.Add(file)
    return message_factory.GetMessageClass(POOL.FindMessageTypeByName(name))
