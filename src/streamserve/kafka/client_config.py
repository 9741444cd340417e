"""One Kafka client configuration for every client a command makes: admin, consumer, producer.

Settings are librdkafka property names (``security.protocol``, ``sasl.username``, ...).
Sources, lowest to highest precedence:

1. a properties file (``--kafka-config client.properties``): ``key=value`` lines as Confluent
   Cloud's client snippets and ``kcat -F`` use; Java client names are translated where they
   map (:data:`JAVA_TRANSLATIONS`, ``sasl.jaas.config``, PEM key and trust stores) and Java-only
   names (:data:`JAVA_ONLY`) are ignored; the Schema Registry's keys (``schema.registry.*``,
   ``basic.auth.*``, as in Confluent Cloud's client config) are kept for the registry
   (:meth:`KafkaClientConfig.registry_properties`) and never given to librdkafka;
2. (``streamserve stream --config FILE.toml`` only) its ``[kafka]`` table;
3. environment variables ``STREAMSERVE_KAFKA_<NAME>``, dots as underscores
   (``STREAMSERVE_KAFKA_SASL_PASSWORD`` → ``sasl.password``);
4. flags: ``--bootstrap-servers`` and the repeatable per-role ``--consumer-config``,
   ``--producer-config``, ``--admin-config KEY=VALUE``, which apply to that role only.

Secrets (:func:`is_secret`) never leave this module in clear: :func:`redact` and
:func:`scrub` hide them in anything printed or logged.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streamserve.errors import InvalidArgument

ROLES = ("consumer", "producer", "admin")
ENV_PREFIX = "STREAMSERVE_KAFKA_"
# Other settings that share the prefix but are not client properties.
RESERVED_ENV = frozenset({"BOOTSTRAP", "VERSION", "POM"})
# librdkafka property names that contain an underscore (the environment form cannot say).
_UNDERSCORE_NAMES = {"log_level": "log_level"}
REDACTED = "[redacted]"
_SECRET_WORDS = ("password", "secret")
_SECRET_PREFIXES = ("ssl.key.", "sasl.oauthbearer.", "ssl_key")
_SECRET_NAMES = frozenset({"sasl.jaas.config", "ssl.keystore.password", "basic.auth.user.info"})

JAVA_TRANSLATIONS = {"sasl.mechanism": "sasl.mechanisms"}
"""Java client property → librdkafka property with the same meaning."""

JAVA_ONLY = frozenset(
    {
        "client.dns.lookup",
        "key.serializer",
        "value.serializer",
        "key.deserializer",
        "value.deserializer",
        "ssl.truststore.type",
        "ssl.keystore.type",
    }
)
"""Java client properties with no librdkafka counterpart: ignored (e.g. in Confluent Cloud's
Java snippet)."""

REGISTRY_PREFIXES = ("basic.auth.", "schema.registry.")
"""The Schema Registry's client keys: kept for the registry, never given to librdkafka."""
_JAAS_LOGIN = re.compile(r"(PlainLoginModule|ScramLoginModule)\s+required(?P<options>.*)", re.S)
_JAAS_OPTION = re.compile(r'(\w+)\s*=\s*"((?:[^"\\]|\\.)*)"')


def is_secret(key: str) -> bool:
    """Property names whose values are secrets: ``*password*``, ``*secret*``, ``ssl.key.*``,
    ``sasl.oauthbearer.*``, ``sasl.jaas.config`` and ``basic.auth.user.info``."""
    name = key.lower()
    return (
        any(word in name for word in _SECRET_WORDS)
        or name.startswith(_SECRET_PREFIXES)
        or name in _SECRET_NAMES
    )


def redact(settings: Mapping[str, Any]) -> dict[str, Any]:
    return {key: REDACTED if is_secret(key) else value for key, value in settings.items()}


def secret_values(settings: Mapping[str, Any]) -> list[str]:
    return [str(v) for k, v in settings.items() if is_secret(k) and v not in (None, "")]


def scrub(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every one of ``secrets`` replaced by ``[redacted]``."""
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    return text


# -- sources ---------------------------------------------------------------------------------


def parse_properties(text: str, source: str) -> dict[str, str]:
    """``key=value`` (or ``key: value``) lines; ``#`` and ``!`` start comments."""
    props: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith(("#", "!")):
            continue
        match = re.match(r"([^=:\s]+)\s*[=:]\s*(.*)", line)
        if match is None:
            raise InvalidArgument(f"{source} line {number}: expected key=value")
        props[match.group(1)] = match.group(2).strip()
    return translate_java(props, source)


def read_properties_file(path: str | Path) -> dict[str, str]:
    try:
        text = Path(path).expanduser().read_text()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not text"
        raise InvalidArgument(f"cannot read Kafka client config {path}: {reason}") from None
    return parse_properties(text, str(path))


def translate_java(props: Mapping[str, str], source: str) -> dict[str, str]:
    """Java client names → librdkafka names where they map; Java-only names dropped."""
    result: dict[str, str] = {}
    for key, value in props.items():
        if key in JAVA_ONLY:
            continue
        if key == "sasl.jaas.config":
            result.update(_jaas_credentials(value, source))
        elif key == "ssl.truststore.location":
            result["ssl.ca.location"] = _pem_store(props, "truststore", value, source)
        elif key == "ssl.keystore.location":
            pem = _pem_store(props, "keystore", value, source)
            result["ssl.certificate.location"] = result["ssl.key.location"] = pem
        elif key == "ssl.endpoint.identification.algorithm" and not value:
            result[key] = "none"
        else:
            result[JAVA_TRANSLATIONS.get(key, key)] = value
    return result


def _jaas_credentials(jaas: str, source: str) -> dict[str, str]:
    match = _JAAS_LOGIN.search(jaas)
    if match is None:
        raise InvalidArgument(
            f"{source}: sasl.jaas.config is supported with PlainLoginModule or "
            "ScramLoginModule only; give sasl.username and sasl.password instead"
        )
    options = dict(_JAAS_OPTION.findall(match.group("options")))
    if "username" not in options or "password" not in options:
        raise InvalidArgument(f'{source}: sasl.jaas.config needs username="..." password="..."')
    return {"sasl.username": options["username"], "sasl.password": options["password"]}


def _pem_store(props: Mapping[str, str], kind: str, location: str, source: str) -> str:
    if props.get(f"ssl.{kind}.type", "JKS").upper() != "PEM":
        raise InvalidArgument(
            f"{source}: ssl.{kind}.location is a JKS/PKCS12 store, which librdkafka cannot "
            f"read; set ssl.{kind}.type=PEM with a PEM file, or use the librdkafka names "
            "ssl.ca.location / ssl.certificate.location / ssl.key.location"
        )
    return location


def from_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """``STREAMSERVE_KAFKA_SASL_PASSWORD=x`` → ``{"sasl.password": "x"}``."""
    props: dict[str, str] = {}
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        suffix = name[len(ENV_PREFIX) :]
        if suffix in RESERVED_ENV or not suffix:
            continue
        lower = suffix.lower()
        props[_UNDERSCORE_NAMES.get(lower, lower.replace("_", "."))] = value
    return props


def parse_key_values(pairs: Iterable[str], flag: str) -> dict[str, str]:
    result: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise InvalidArgument(f"{flag} expects KEY=VALUE, got {pair.partition('=')[0]!r}")
        result[key.strip()] = value.strip()
    return result


# -- the merged configuration ----------------------------------------------------------------


@dataclass(frozen=True)
class KafkaClientConfig:
    """``common`` settings for every client plus per-role overrides (``roles[role]``)."""

    common: Mapping[str, str] = field(default_factory=dict)
    roles: Mapping[str, Mapping[str, str]] = field(default_factory=dict)

    @classmethod
    def for_bootstrap(cls, bootstrap_servers: str) -> KafkaClientConfig:
        return cls({"bootstrap.servers": bootstrap_servers})

    @property
    def bootstrap_servers(self) -> str | None:
        return self.common.get("bootstrap.servers")

    def for_role(self, role: str) -> dict[str, str]:
        if role not in ROLES:
            raise ValueError(f"unknown Kafka client role {role!r}")
        merged = {**self.common, **self.roles.get(role, {})}
        return {k: v for k, v in merged.items() if not k.startswith(REGISTRY_PREFIXES)}

    def registry_properties(self) -> dict[str, str]:
        """The Schema Registry's keys (``schema.registry.url``, ``basic.auth.user.info``,
        ``schema.registry.ssl.*``, ...) from the common settings."""
        return {k: v for k, v in self.common.items() if k.startswith(REGISTRY_PREFIXES)}

    def secret_values(self) -> list[str]:
        """Every secret value, common or per role (for :func:`scrub`)."""
        found = secret_values(self.common)
        for overrides in self.roles.values():
            found += secret_values(overrides)
        return found

    def redacted(self) -> dict[str, Any]:
        """``{..common.., "consumer": {...}, ...}`` with secrets redacted, for printing."""
        document: dict[str, Any] = redact(self.common)
        for role in ROLES:
            if self.roles.get(role):
                document[role] = redact(self.roles[role])
        return document

    def require_bootstrap(self) -> str:
        if not self.bootstrap_servers:
            raise InvalidArgument(
                "no Kafka bootstrap servers: give --bootstrap-servers, bootstrap.servers in "
                "--kafka-config, or STREAMSERVE_KAFKA_BOOTSTRAP_SERVERS"
            )
        return self.bootstrap_servers


def merge(layers: Iterable[KafkaClientConfig]) -> KafkaClientConfig:
    """Later layers win, key by key; role overrides merge per role."""
    common: dict[str, str] = {}
    roles: dict[str, dict[str, str]] = {role: {} for role in ROLES}
    for layer in layers:
        common.update(layer.common)
        for role, overrides in layer.roles.items():
            roles[role].update(overrides)
    return KafkaClientConfig(common, {role: values for role, values in roles.items() if values})


def load(
    *,
    config_file: str | Path | None = None,
    file_layer: KafkaClientConfig | None = None,
    environ: Mapping[str, str] | None = None,
    bootstrap_servers: str | None = None,
    role_flags: Mapping[str, Iterable[str]] | None = None,
) -> KafkaClientConfig:
    """Merge properties file < ``file_layer`` (a TOML table) < environment < flags."""
    layers = []
    if config_file:
        layers.append(KafkaClientConfig(read_properties_file(config_file)))
    if file_layer is not None:
        layers.append(file_layer)
    layers.append(KafkaClientConfig(from_environment(os.environ if environ is None else environ)))
    flags = {"bootstrap.servers": bootstrap_servers} if bootstrap_servers else {}
    roles = {
        role: parse_key_values(pairs, f"--{role}-config")
        for role, pairs in (role_flags or {}).items()
    }
    layers.append(KafkaClientConfig(flags, roles))
    return merge(layers)


# -- command-line flags ----------------------------------------------------------------------


def add_arguments(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    *,
    bootstrap_flags: tuple[str, ...] = ("--bootstrap-servers",),
    bootstrap_help: str = "Kafka bootstrap servers host:port[,...] (default: bootstrap.servers "
    "from --kafka-config or STREAMSERVE_KAFKA_BOOTSTRAP_SERVERS)",
) -> None:
    """The flags every Kafka command takes; read them back with :func:`from_args`."""
    parser.add_argument(*bootstrap_flags, dest="bootstrap_servers", help=bootstrap_help)
    parser.add_argument(
        "--kafka-config",
        metavar="FILE",
        help="librdkafka (or Java client) properties file, key=value lines, applied to every "
        "Kafka client; STREAMSERVE_KAFKA_<NAME> environment variables override it",
    )
    for role in ROLES:
        parser.add_argument(
            f"--{role}-config",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help=f"librdkafka property for the {role} only (repeatable; overrides the rest)",
        )
    parser.add_argument(
        "--kafka-connect-timeout-s",
        type=float,
        default=30.0,
        help="give up when no Kafka broker answers within this many seconds (a wrong "
        "password or an untrusted certificate fails at once)",
    )


def from_args(
    args: argparse.Namespace,
    environ: Mapping[str, str] | None = None,
    file_layer: KafkaClientConfig | None = None,
) -> KafkaClientConfig:
    return load(
        config_file=getattr(args, "kafka_config", None),
        file_layer=file_layer,
        environ=environ,
        bootstrap_servers=getattr(args, "bootstrap_servers", None),
        role_flags={role: getattr(args, f"{role}_config", None) or [] for role in ROLES},
    )
