"""A real Schema Registry (Apicurio Registry, Confluent API) started by the project.

- the session's plain registry (``schema_registry_url``): Avro through confluent-kafka's
  ``SchemaRegistryClient`` and (de)serializers, subjects over REST, BACKWARD compatibility
  (an incompatible schema is refused with 409), Confluent-like subject deletion, and what
  Apicurio answers to ``GET /schemas/ids/{id}?format=serialized`` for Protobuf;
- one registry with TLS and basic auth for the module: 401 without or with wrong
  credentials, HTTPS only, confluent-kafka's client with ``basic.auth.*`` and the CA, and no
  secret on the process's command line;
- a TLS-only one, stopped mid-module: nothing left behind;
- ``streamserve kafka start --schema-registry`` and ``stop``.
"""

from __future__ import annotations

import json
import os
import ssl
import stat
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.serialization import MessageField, SerializationContext

from streamserve.kafka import process
from streamserve.kafka.registry import CCOMPAT_PATH, LocalSchemaRegistry
from streamserve.processes import streamserve_command

pytestmark = pytest.mark.integration

USER, PASSWORD = "user", "secret"
RECORD = {
    "type": "record",
    "name": "Transaction",
    "namespace": "demo",
    "fields": [{"name": "id", "type": "string"}, {"name": "amount", "type": "double"}],
}
PROTO = (
    'syntax = "proto3";\npackage demo;\nmessage Tx {\n  string id = 1;\n  double amount = 2;\n}\n'
)


def _subject() -> str:
    return f"s-{uuid.uuid4().hex[:10]}-value"


def _with_field(field: dict[str, object]) -> str:
    return json.dumps({**RECORD, "fields": [*RECORD["fields"], field]})  # type: ignore[list-item]


# -- the session's plain registry ----------------------------------------------------------


@pytest.fixture
def client(schema_registry_url: str) -> SchemaRegistryClient:
    return SchemaRegistryClient({"url": schema_registry_url})


def test_the_url_is_the_confluent_api(schema_registry_url: str) -> None:
    assert schema_registry_url.startswith("http://127.0.0.1:")
    assert schema_registry_url.endswith(CCOMPAT_PATH)


def test_avro_schema_registered_and_read_back_by_id(
    client: SchemaRegistryClient, schema_registry_url: str
) -> None:
    subject = _subject()
    schema_id = client.register_schema(subject, Schema(json.dumps(RECORD), "AVRO"))
    fresh = SchemaRegistryClient({"url": schema_registry_url})  # nothing cached: over HTTP
    found = fresh.get_schema(schema_id)
    assert found.schema_type == "AVRO"
    assert json.loads(found.schema_str) == RECORD
    assert fresh.get_latest_version(subject).schema_id == schema_id
    subjects = httpx.get(f"{schema_registry_url}/subjects", timeout=10)
    assert subjects.status_code == 200
    assert subject in subjects.json()
    again = client.register_schema(subject, Schema(json.dumps(RECORD), "AVRO"))
    assert again == schema_id  # the same schema keeps its id


def test_avro_serializer_and_deserializer(schema_registry_url: str) -> None:
    topic = f"t-{uuid.uuid4().hex[:10]}"
    serializer = AvroSerializer(
        SchemaRegistryClient({"url": schema_registry_url}), json.dumps(RECORD)
    )
    context = SerializationContext(topic, MessageField.VALUE)
    value = serializer({"id": "a1", "amount": 9.5}, context)
    assert value is not None and value[0] == 0  # Confluent's wire format: magic byte, id
    deserializer = AvroDeserializer(SchemaRegistryClient({"url": schema_registry_url}))
    assert deserializer(value, context) == {"id": "a1", "amount": 9.5}


def test_backward_compatibility_refuses_an_incompatible_schema_with_409(
    client: SchemaRegistryClient, schema_registry_url: str
) -> None:
    subject = _subject()
    client.register_schema(subject, Schema(json.dumps(RECORD), "AVRO"))
    config = httpx.put(
        f"{schema_registry_url}/config/{subject}", json={"compatibility": "BACKWARD"}, timeout=10
    )
    assert config.status_code == 200, config.text
    assert config.json()["compatibility"] == "BACKWARD"
    required = _with_field({"name": "country", "type": "string"})  # no default: incompatible
    refused = httpx.post(
        f"{schema_registry_url}/subjects/{subject}/versions", json={"schema": required}, timeout=10
    )
    assert refused.status_code == 409, refused.text
    with pytest.raises(SchemaRegistryError) as raised:
        client.register_schema(subject, Schema(required, "AVRO"))
    assert raised.value.http_status_code == 409
    optional = _with_field({"name": "country", "type": "string", "default": ""})
    client.register_schema(subject, Schema(optional, "AVRO"))
    assert len(client.get_versions(subject)) == 2


def test_subjects_can_be_deleted_as_in_confluents_registry(
    client: SchemaRegistryClient, schema_registry_url: str
) -> None:
    subject = _subject()
    client.register_schema(subject, Schema(json.dumps(RECORD), "AVRO"))
    assert client.delete_subject(subject) == [1]
    assert subject not in httpx.get(f"{schema_registry_url}/subjects", timeout=10).json()


def test_protobuf_serialized_format_is_not_confluents(
    client: SchemaRegistryClient, schema_registry_url: str
) -> None:
    """Apicurio 3.3.3 answers ``?format=serialized`` with the FileDescriptorProto's raw bytes
    as a JSON string, where Confluent sends them base64-encoded: confluent-kafka's
    ProtobufDeserializer (which asks for that format) cannot use a registry-fetched schema."""
    schema_id = client.register_schema(_subject(), Schema(PROTO, "PROTOBUF"))
    text = httpx.get(f"{schema_registry_url}/schemas/ids/{schema_id}", timeout=10)
    assert text.json() == {"schema": PROTO, "schemaType": "PROTOBUF"}
    serialized = httpx.get(
        f"{schema_registry_url}/schemas/ids/{schema_id}?format=serialized", timeout=10
    )
    assert serialized.status_code == 200
    raw = serialized.json()["schema"]
    assert raw.startswith("\n\x02Tx")  # FileDescriptorProto field 1 (name "Tx"): not base64


# -- TLS and basic auth --------------------------------------------------------------------


@pytest.fixture(scope="module")
def secured() -> Iterator[LocalSchemaRegistry]:
    with LocalSchemaRegistry(tls=True, basic_auth=True, username=USER, password=PASSWORD) as r:
        yield r


def _trusting(registry: LocalSchemaRegistry) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(registry.ca_file))


def test_secured_registry_needs_credentials(secured: LocalSchemaRegistry) -> None:
    assert secured.url.startswith("https://127.0.0.1:")
    subjects = f"{secured.url}/subjects"
    verify = _trusting(secured)
    assert httpx.get(subjects, verify=verify, timeout=10).status_code == 401
    wrong = httpx.get(subjects, verify=verify, auth=(USER, "wrong"), timeout=10)
    assert wrong.status_code == 401
    right = httpx.get(subjects, verify=verify, auth=(USER, PASSWORD), timeout=10)
    assert right.status_code == 200


def test_secured_registry_speaks_only_tls(secured: LocalSchemaRegistry) -> None:
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{secured.port}{CCOMPAT_PATH}/subjects", timeout=10)
    with pytest.raises(httpx.ConnectError):  # the throw-away CA is not trusted by default
        httpx.get(f"{secured.url}/subjects", auth=(USER, PASSWORD), timeout=10)


def test_confluent_client_with_basic_auth_and_the_ca(secured: LocalSchemaRegistry) -> None:
    conf = {
        "url": secured.url,
        "basic.auth.user.info": f"{USER}:{PASSWORD}",
        "ssl.ca.location": str(secured.ca_file),
    }
    assert secured.client_config == conf
    subject = _subject()
    schema_id = SchemaRegistryClient(conf).register_schema(subject, Schema(json.dumps(RECORD)))
    fresh = SchemaRegistryClient(secured.client_config)
    assert json.loads(fresh.get_schema(schema_id).schema_str) == RECORD
    anonymous = SchemaRegistryClient({"url": secured.url, "ssl.ca.location": str(secured.ca_file)})
    with pytest.raises(SchemaRegistryError) as raised:
        anonymous.get_subjects()
    assert raised.value.http_status_code == 401


def test_the_streams_registry_settings_work(secured: LocalSchemaRegistry) -> None:
    """``properties`` (the keys of ``--kafka-config`` files) as the stream's codecs read them."""
    from streamserve.stream.codecs.registry import RegistrySettings

    settings = RegistrySettings.from_properties(secured.properties)
    assert settings is not None and settings.user_info == f"{USER}:{PASSWORD}"
    assert SchemaRegistryClient(settings.client_conf()).get_subjects() is not None


def test_no_secret_on_the_command_line(secured: LocalSchemaRegistry) -> None:
    assert secured.pid is not None and secured.work_dir is not None
    command = process.cmdline(secured.pid)
    assert "quarkus-run.jar" in command
    assert PASSWORD not in command and "quarkus.security" not in command
    settings = secured.work_dir / "config" / "application.properties"
    assert stat.S_IMODE(settings.stat().st_mode) == 0o600
    assert secured.client_properties_file is not None
    properties = secured.client_properties_file.read_text()
    assert f"basic.auth.user.info={USER}:{PASSWORD}\n" in properties
    assert f"schema.registry.url={secured.url}\n" in properties


def test_stop_leaves_nothing_behind() -> None:
    registry = LocalSchemaRegistry(tls=True).start()
    pid, work_dir = registry.pid, registry.work_dir
    assert pid is not None and work_dir is not None and registry.startup_seconds is not None
    answer = httpx.get(f"{registry.url}/subjects", verify=_trusting(registry), timeout=10)
    assert answer.status_code == 200  # TLS alone: no credentials needed
    registry.stop()
    assert not process.pid_alive(pid)
    assert not work_dir.exists()


# -- the CLI -------------------------------------------------------------------------------


def test_cli_start_and_stop_with_a_schema_registry(tmp_path: Path) -> None:
    env = {**os.environ, "STREAMSERVE_RUN_DIR": str(tmp_path / "run")}
    command = streamserve_command("kafka", "start", "--schema-registry")
    try:
        started = subprocess.run(
            command, env=env, capture_output=True, text=True, timeout=300, check=False
        )
        assert started.returncode == 0, started.stdout + started.stderr
        lines = started.stdout.strip().splitlines()
        [url] = [line.split(": ", 1)[1] for line in lines if line.startswith("schema registry: ")]
        assert lines[-1].startswith("127.0.0.1:")  # the bootstrap address stays the last line
        assert httpx.get(f"{url}/subjects", timeout=10).json() == []
        saved = json.loads((tmp_path / "run" / "schema-registry.json").read_text())
        assert saved["url"] == url
    finally:
        stopped = subprocess.run(
            streamserve_command("kafka", "stop"), env=env, capture_output=True, text=True,
            timeout=120, check=False,
        )  # fmt: skip
    assert f"schema registry pid {saved['pid']} stopped" in stopped.stdout
    assert not process.pid_alive(saved["pid"])
    assert not Path(saved["work_dir"]).exists()
    assert not (tmp_path / "run" / "schema-registry.json").exists()
