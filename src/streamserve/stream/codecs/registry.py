"""The Schema Registry as the formats use it: settings, one client, and what a failure means.

Settings use the keys of confluent-kafka and of Confluent Cloud's downloadable client
configuration (``schema.registry.url``, ``basic.auth.credentials.source``,
``basic.auth.user.info``, ``schema.registry.ssl.ca.location``,
``schema.registry.ssl.certificate.location``, ``schema.registry.ssl.key.location``,
``schema.registry.ssl.key.password``), so the same properties file serves Kafka and the
registry. The secret (``basic.auth.user.info``, the key password) never reaches argv or a
log line.

Failures: a registry that cannot be reached (connection refused, a timeout, TLS, a 5xx
answer) is :class:`~streamserve.stream.errors.DependencyUnavailable` — never a record's
fault; an id or subject the registry does not have (404) is the record's fault.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import httpx
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError

from streamserve.errors import InvalidArgument
from streamserve.stream.errors import DependencyUnavailable

REGISTRY = "schema registry"
MAGIC_BYTE = 0
WIRE_HEADER = struct.Struct(">bI")  # magic byte 0, schema id (big-endian uint32)

SubjectStrategy = Literal["topic", "record"]

URL_KEY = "schema.registry.url"
SECRET_KEYS = frozenset({"basic.auth.user.info", "schema.registry.ssl.key.password"})
_SSL_KEYS = {
    "schema.registry.ssl.ca.location": "ssl.ca.location",
    "schema.registry.ssl.certificate.location": "ssl.certificate.location",
    "schema.registry.ssl.key.location": "ssl.key.location",
    "schema.registry.ssl.key.password": "ssl.key.password",
}
REGISTRY_KEYS = frozenset({URL_KEY, "basic.auth.credentials.source", *SECRET_KEYS, *_SSL_KEYS})
"""Every key of a client properties file that belongs to the registry, not librdkafka."""


def _http_errors() -> tuple[type[Exception], ...]:
    """What the registry client raises for a transport failure: confluent-kafka's client
    uses httpx2 where it is installed (its schemaregistry extra on Python >= 3.10), else
    httpx; an ``httpx2.ConnectError`` is no ``httpx.HTTPError``."""
    errors: list[type[Exception]] = [httpx.HTTPError]
    try:
        import httpx2
    except ImportError:  # pragma: no cover - Python < 3.10 or an older confluent-kafka
        pass
    else:
        errors.append(httpx2.HTTPError)
    return tuple(errors)


HTTP_ERRORS = _http_errors()


def is_registry_key(key: str) -> bool:
    return key in REGISTRY_KEYS


@dataclass(frozen=True, repr=False)
class RegistrySettings:
    """Where the registry is and how to authenticate; ``repr`` hides the secret."""

    url: str
    user_info: str | None = None  # "key:secret" (basic auth, Confluent Cloud's API key)
    ssl: Mapping[str, str] | None = None  # confluent-kafka's ssl.* client keys
    timeout_s: float = 5.0  # bounds a held batch's retry (the consume loop awaits it)

    @classmethod
    def from_properties(cls, properties: Mapping[str, str]) -> RegistrySettings | None:
        """From client properties (a file, the environment, the TOML); None without a URL."""
        url = properties.get(URL_KEY)
        if not url:
            return None
        source = properties.get("basic.auth.credentials.source", "USER_INFO").upper()
        user_info = properties.get("basic.auth.user.info")
        if user_info and source not in ("USER_INFO", "SASL_INHERIT"):
            raise InvalidArgument(
                f"basic.auth.credentials.source={source} is not supported; use USER_INFO"
            )
        if user_info is not None and ":" not in user_info:
            raise InvalidArgument("basic.auth.user.info must be KEY:SECRET")
        ssl = {_SSL_KEYS[key]: value for key, value in properties.items() if key in _SSL_KEYS}
        return cls(url, user_info or None, ssl or None)

    def client_conf(self) -> dict[str, Any]:
        conf: dict[str, Any] = {"url": self.url, "timeout": self.timeout_s, "max.retries": 1}
        if self.user_info:
            conf["basic.auth.user.info"] = self.user_info
        conf.update(self.ssl or {})
        return conf

    def __repr__(self) -> str:
        auth = ", basic auth" if self.user_info else ""
        return f"RegistrySettings({self.url!r}{auth})"


def wire_schema_id(value: bytes | None) -> int | None:
    """The schema id of a value in the Confluent wire format (magic byte 0 + 4-byte id);
    None when the value is not in it."""
    if value is None or len(value) < WIRE_HEADER.size or value[0] != MAGIC_BYTE:
        return None
    return int.from_bytes(value[1:5], "big")


def wire_header(schema_id: int) -> bytes:
    return WIRE_HEADER.pack(MAGIC_BYTE, schema_id)


def subject_name(strategy: SubjectStrategy, topic: str, record_name: str) -> str:
    """TopicNameStrategy (``<topic>-value``) or RecordNameStrategy (the record's full name)."""
    return f"{topic}-value" if strategy == "topic" else record_name


class Registry:
    """One confluent-kafka :class:`SchemaRegistryClient`, with failures classified.

    Blocking calls: use it from :meth:`RecordFormat.resolve` (a worker thread) only."""

    def __init__(self, settings: RegistrySettings) -> None:
        self.settings = settings
        self.client = SchemaRegistryClient(settings.client_conf())
        self._compatibility_set: set[str] = set()

    def schema(self, schema_id: int, fmt: str | None = None) -> Schema | None:
        """The schema with ``schema_id``; None when the registry has no such id."""
        try:
            return self.client.get_schema(schema_id, fmt=fmt)
        except SchemaRegistryError as error:
            if error.http_status_code == 404:
                return None
            raise _unavailable(error) from error
        except HTTP_ERRORS as error:
            raise _unavailable(error) from error

    def register(self, subject: str, schema: Schema, compatibility: str = "BACKWARD") -> int:
        """Register ``schema`` under ``subject`` (its id; the same id for a schema already
        there), after setting the subject's compatibility once. A schema the subject's
        compatibility refuses raises ``InvalidArgument`` (the registry's reason)."""
        try:
            if subject not in self._compatibility_set:
                self.client.set_compatibility(subject, compatibility)
                self._compatibility_set.add(subject)
            return self.client.register_schema(subject, schema)
        except SchemaRegistryError as error:
            if error.http_status_code in (409, 422):
                raise InvalidArgument(
                    f"schema registry refused the output schema for {subject!r}: "
                    f"{error.error_message}"
                ) from error
            raise _unavailable(error) from error
        except HTTP_ERRORS as error:
            raise _unavailable(error) from error

    def close(self) -> None:
        self.client.__exit__()  # type: ignore[no-untyped-call]


def _unavailable(error: Exception) -> DependencyUnavailable:
    if isinstance(error, SchemaRegistryError):
        reason = f"HTTP {error.http_status_code}: {error.error_message}"
    else:
        reason = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
    return DependencyUnavailable(REGISTRY, reason)
