"""A secured local broker: throw-away CA and certificates, SASL users, a client properties file.

``BrokerSecurity.generate(mode, directory, host)`` writes into ``directory`` (mode 0700):

- ``ca.pem``: a new CA certificate (its key is never written: nothing else is signed later);
- ``broker.pem``: the broker's certificate and unencrypted PKCS#8 key, read by Kafka as a PEM
  keystore (``ssl.keystore.type=PEM``, no keytool); SANs ``localhost``, ``127.0.0.1`` and
  ``host``;
- ``client.pem`` / ``client-key.pem`` (mTLS only): the client certificate and key;
- ``client.properties``: librdkafka settings a client needs (also ``kcat -F``'s format).

Modes: ``plaintext``; ``ssl`` (TLS, server authentication only); ``mtls`` (TLS with
``ssl.client.auth=required``); ``sasl_plaintext`` (client file uses PLAIN); ``sasl_ssl``
(client file uses SCRAM-SHA-512). SASL listeners accept both PLAIN and SCRAM-SHA-512 for the
user :data:`CLIENT_USER`: PLAIN users live in the listener's JAAS config, the SCRAM
credential is created through the admin API once the broker runs (:func:`create_scram_user`).
The broker talks to itself (transaction markers) over the same listener as user
:data:`BROKER_USER` (PLAIN), or with its own certificate.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["SECURITY_MODES", "BrokerSecurity", "create_scram_user"]

from streamserve.kafka.config import SECURITY_MODES

PROTOCOLS = {
    "plaintext": "PLAINTEXT",
    "ssl": "SSL",
    "mtls": "SSL",
    "sasl_plaintext": "SASL_PLAINTEXT",
    "sasl_ssl": "SASL_SSL",
}
CLIENT_USER = "streamserve"
BROKER_USER = "broker"
CLIENT_PROPERTIES = "client.properties"
SCRAM_ITERATIONS = 8192
_CERT_DAYS = 30
_PLAIN_MODULE = "org.apache.kafka.common.security.plain.PlainLoginModule"
_SCRAM_MODULE = "org.apache.kafka.common.security.scram.ScramLoginModule"


@dataclass(frozen=True)
class BrokerSecurity:
    mode: str
    directory: Path
    client_password: str = ""
    broker_password: str = ""

    @property
    def protocol(self) -> str:
        return PROTOCOLS[self.mode]

    @property
    def uses_sasl(self) -> bool:
        return self.mode.startswith("sasl_")

    @property
    def uses_tls(self) -> bool:
        return self.protocol in ("SSL", "SASL_SSL")

    @property
    def client_mechanism(self) -> str:
        return "SCRAM-SHA-512" if self.mode == "sasl_ssl" else "PLAIN"

    @property
    def client_properties_file(self) -> Path:
        return self.directory / CLIENT_PROPERTIES

    @classmethod
    def generate(cls, mode: str, directory: Path, host: str) -> BrokerSecurity:
        if mode not in SECURITY_MODES:
            raise ValueError(f"unknown security mode {mode!r}; choose from {SECURITY_MODES}")
        directory.mkdir(parents=True, exist_ok=True)
        directory.chmod(0o700)
        sasl = mode.startswith("sasl_")
        security = cls(
            mode,
            directory,
            client_password=secrets.token_urlsafe(18) if sasl else "",
            broker_password=secrets.token_urlsafe(18) if sasl else "",
        )
        if security.uses_tls:
            _write_certificates(directory, host, client=mode == "mtls")
        return security

    # -- the broker's side ------------------------------------------------------------------

    def server_properties(self, host: str, port: int, controller_port: int) -> dict[str, str]:
        listener = self.protocol
        props = {
            "listeners": f"{listener}://{host}:{port},CONTROLLER://{host}:{controller_port}",
            "advertised.listeners": f"{listener}://{host}:{port}",
            "inter.broker.listener.name": listener,
            "listener.security.protocol.map": f"{listener}:{listener},CONTROLLER:PLAINTEXT",
        }
        if self.uses_tls:
            props.update(self._tls_server_properties())
        if self.uses_sasl:
            props.update(self._sasl_server_properties(listener.lower()))
        return props

    def _tls_server_properties(self) -> dict[str, str]:
        props = {
            "ssl.keystore.type": "PEM",
            "ssl.keystore.location": str(self.directory / "broker.pem"),
            "ssl.truststore.type": "PEM",
            "ssl.truststore.location": str(self.directory / "ca.pem"),
            "ssl.endpoint.identification.algorithm": "",
        }
        if self.mode == "mtls":
            props["ssl.client.auth"] = "required"
        return props

    def _sasl_server_properties(self, listener: str) -> dict[str, str]:
        plain_users = (
            f'{_PLAIN_MODULE} required username="{BROKER_USER}" '
            f'password="{self.broker_password}" user_{BROKER_USER}="{self.broker_password}" '
            f'user_{CLIENT_USER}="{self.client_password}";'
        )
        return {
            "sasl.enabled.mechanisms": "SCRAM-SHA-512,PLAIN",
            "sasl.mechanism.inter.broker.protocol": "PLAIN",
            f"listener.name.{listener}.plain.sasl.jaas.config": plain_users,
            f"listener.name.{listener}.scram-sha-512.sasl.jaas.config": (
                f"{_SCRAM_MODULE} required;"
            ),
        }

    # -- the clients' side ------------------------------------------------------------------

    def client_properties(self, bootstrap_servers: str) -> dict[str, str]:
        """What a client needs: the file ``kafka start`` writes and ``kcat -F`` reads."""
        props = {"bootstrap.servers": bootstrap_servers, "security.protocol": self.protocol}
        props.update(self._tls_client_properties())
        if self.uses_sasl:
            props.update(
                {
                    "sasl.mechanisms": self.client_mechanism,
                    "sasl.username": CLIENT_USER,
                    "sasl.password": self.client_password,
                }
            )
        return props

    def broker_client_properties(self, bootstrap_servers: str) -> dict[str, str]:
        """The broker's own identity (PLAIN superuser-to-be), used to set it up."""
        props = self.client_properties(bootstrap_servers)
        if self.uses_sasl:
            props.update(
                {
                    "sasl.mechanisms": "PLAIN",
                    "sasl.username": BROKER_USER,
                    "sasl.password": self.broker_password,
                }
            )
        return props

    def _tls_client_properties(self) -> dict[str, str]:
        if not self.uses_tls:
            return {}
        props = {"ssl.ca.location": str(self.directory / "ca.pem")}
        if self.mode == "mtls":
            props["ssl.certificate.location"] = str(self.directory / "client.pem")
            props["ssl.key.location"] = str(self.directory / "client-key.pem")
        return props

    def write_client_properties(self, bootstrap_servers: str) -> Path:
        lines = [
            f"# streamserve kafka start --security {self.mode}: a throw-away local broker.",
            "# Use with: streamserve ... --kafka-config THIS_FILE, or kcat -F THIS_FILE -L",
        ]
        lines += [f"{k}={v}" for k, v in self.client_properties(bootstrap_servers).items()]
        path = self.client_properties_file
        path.touch(mode=0o600)
        path.write_text("\n".join(lines) + "\n")
        return path


def create_scram_user(admin_settings: dict[str, str], user: str, password: str) -> None:
    """Create or update ``user``'s SCRAM-SHA-512 credential through the admin API."""
    from confluent_kafka.admin import (  # type: ignore[attr-defined]
        AdminClient,
        ScramCredentialInfo,
        ScramMechanism,
        UserScramCredentialUpsertion,
    )

    admin = AdminClient({**admin_settings, "log_level": 0})
    info = ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, SCRAM_ITERATIONS)
    upsert = UserScramCredentialUpsertion(user, info, password.encode())
    for future in admin.alter_user_scram_credentials([upsert]).values():
        future.result(timeout=30)


# -- certificates ----------------------------------------------------------------------------


def _write_certificates(directory: Path, host: str, *, client: bool) -> None:
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("streamserve throw-away CA")
    ca_cert = _sign(_builder(ca_name, ca_name, ca_key, ca=True), ca_key)
    (directory / "ca.pem").write_bytes(ca_cert.public_bytes(Encoding.PEM))
    broker_key = ec.generate_private_key(ec.SECP256R1())
    broker = _builder(_name("localhost"), ca_name, broker_key, ca=False)
    broker = broker.add_extension(_subject_alternative_names(host), critical=False)
    broker_pem = _sign(broker, ca_key).public_bytes(Encoding.PEM) + _pkcs8(broker_key)
    _write_secret(directory / "broker.pem", broker_pem)
    if client:
        client_key = ec.generate_private_key(ec.SECP256R1())
        client_cert = _sign(_builder(_name(CLIENT_USER), ca_name, client_key, ca=False), ca_key)
        (directory / "client.pem").write_bytes(client_cert.public_bytes(Encoding.PEM))
        _write_secret(directory / "client-key.pem", _pkcs8(client_key))


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _builder(
    subject: x509.Name, issuer: x509.Name, key: ec.EllipticCurvePrivateKey, *, ca: bool
) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=_CERT_DAYS))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        return builder
    usages = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    return builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)


def _sign(
    builder: x509.CertificateBuilder, issuer_key: ec.EllipticCurvePrivateKey
) -> x509.Certificate:
    return builder.sign(issuer_key, hashes.SHA256())


def _subject_alternative_names(host: str) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = [
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
    ]
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        names.append(x509.DNSName(host))
    else:
        if str(address) != "127.0.0.1":
            names.append(x509.IPAddress(address))
    return x509.SubjectAlternativeName(names)


def _pkcs8(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())


def _write_secret(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
