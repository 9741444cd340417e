"""One Kafka client configuration: properties files (Java names too), environment, flags,
per-role overrides, redaction; librdkafka's logs through Python logging."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from streamserve.errors import InvalidArgument
from streamserve.kafka import client_config
from streamserve.kafka.client_config import KafkaClientConfig
from streamserve.kafka.client_log import LibrdkafkaLogBridge

CONFLUENT_CLOUD_PYTHON = """\
# Required connection configs for Kafka producer, consumer, and admin
bootstrap.servers=pkc-abcde.eu-west-1.aws.confluent.cloud:9092
security.protocol=SASL_SSL
sasl.mechanisms=PLAIN
sasl.username=APIKEY
sasl.password=s3cr3t/with=equals

# Best practice for higher availability in librdkafka clients prior to 1.7
session.timeout.ms=45000
"""

CONFLUENT_CLOUD_JAVA = """\
bootstrap.servers=pkc-abcde.eu-west-1.aws.confluent.cloud:9092
security.protocol=SASL_SSL
sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required \
username="APIKEY" password="s3cr3t";
sasl.mechanism=PLAIN
client.dns.lookup=use_all_dns_ips
acks=all
"""


def test_reads_a_confluent_cloud_python_snippet(tmp_path: Path) -> None:
    path = tmp_path / "client.properties"
    path.write_text(CONFLUENT_CLOUD_PYTHON)
    props = client_config.read_properties_file(path)
    assert props == {
        "bootstrap.servers": "pkc-abcde.eu-west-1.aws.confluent.cloud:9092",
        "security.protocol": "SASL_SSL",
        "sasl.mechanisms": "PLAIN",
        "sasl.username": "APIKEY",
        "sasl.password": "s3cr3t/with=equals",
        "session.timeout.ms": "45000",
    }


def test_translates_the_java_client_names() -> None:
    props = client_config.parse_properties(CONFLUENT_CLOUD_JAVA, "java.properties")
    assert props == {
        "bootstrap.servers": "pkc-abcde.eu-west-1.aws.confluent.cloud:9092",
        "security.protocol": "SASL_SSL",
        "sasl.username": "APIKEY",
        "sasl.password": "s3cr3t",
        "sasl.mechanisms": "PLAIN",
        "acks": "all",
    }


def test_scram_jaas_and_pem_stores_translate() -> None:
    text = (
        "sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required "
        'username="u" password="p";\n'
        "ssl.truststore.type=PEM\nssl.truststore.location=/ca.pem\n"
        "ssl.keystore.type=PEM\nssl.keystore.location=/me.pem\n"
        "ssl.endpoint.identification.algorithm=\n"
    )
    assert client_config.parse_properties(text, "f") == {
        "sasl.username": "u",
        "sasl.password": "p",
        "ssl.ca.location": "/ca.pem",
        "ssl.certificate.location": "/me.pem",
        "ssl.key.location": "/me.pem",
        "ssl.endpoint.identification.algorithm": "none",
    }


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("ssl.truststore.location=/trust.jks\n", "JKS/PKCS12"),
        ("sasl.jaas.config=com.example.Kerberos required;\n", "PlainLoginModule"),
        ("just some words\n", "line 1: expected key=value"),
    ],
)
def test_unusable_lines_are_clear_errors(text: str, complaint: str) -> None:
    with pytest.raises(InvalidArgument, match=complaint):
        client_config.parse_properties(text, "f")


def test_a_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match=r"cannot read Kafka client config .*missing"):
        client_config.read_properties_file(tmp_path / "missing")


def test_environment_names_map_to_properties() -> None:
    environ = {
        "STREAMSERVE_KAFKA_SASL_PASSWORD": "pw",
        "STREAMSERVE_KAFKA_BOOTSTRAP_SERVERS": "b:9092",
        "STREAMSERVE_KAFKA_LOG_LEVEL": "3",
        "STREAMSERVE_KAFKA_BOOTSTRAP": "reserved for the test helpers",
        "STREAMSERVE_KAFKA_VERSION": "reserved for the jars",
        "OTHER": "x",
    }
    assert client_config.from_environment(environ) == {
        "sasl.password": "pw",
        "bootstrap.servers": "b:9092",
        "log_level": "3",
    }


def test_precedence_file_then_environment_then_flags(tmp_path: Path) -> None:
    path = tmp_path / "client.properties"
    path.write_text("bootstrap.servers=file:1\nsasl.username=file\nsasl.password=file\n")
    config = client_config.load(
        config_file=path,
        file_layer=KafkaClientConfig({"client.id": "toml", "sasl.username": "toml"}),
        environ={"STREAMSERVE_KAFKA_SASL_PASSWORD": "env"},
        bootstrap_servers="flag:1",
        role_flags={"consumer": ["fetch.min.bytes=1"], "admin": ["sasl.password=admin-only"]},
    )
    assert config.for_role("producer") == {
        "bootstrap.servers": "flag:1",
        "sasl.username": "toml",
        "sasl.password": "env",
        "client.id": "toml",
    }
    assert config.for_role("consumer")["fetch.min.bytes"] == "1"
    assert config.for_role("admin")["sasl.password"] == "admin-only"
    assert sorted(config.secret_values()) == ["admin-only", "env"]


def test_secrets_are_redacted() -> None:
    config = KafkaClientConfig(
        {
            "bootstrap.servers": "b:1",
            "sasl.password": "pw",
            "ssl.key.password": "kp",
            "ssl.key.pem": "-----BEGIN",
            "sasl.oauthbearer.client.secret": "cs",
            "sasl.jaas.config": "x",
        },
        {"consumer": {"sasl.password": "cpw"}},
    )
    document = config.redacted()
    assert document["bootstrap.servers"] == "b:1"
    assert document["consumer"] == {"sasl.password": "[redacted]"}
    hidden = [key for key, value in document.items() if value == "[redacted]"]
    assert len(hidden) == 5
    text = client_config.scrub("failed with pw and cpw", config.secret_values())
    assert text == "failed with [redacted] and [redacted]"


def test_missing_bootstrap_servers_says_where_to_give_them() -> None:
    with pytest.raises(InvalidArgument, match="STREAMSERVE_KAFKA_BOOTSTRAP_SERVERS"):
        KafkaClientConfig().require_bootstrap()


def test_bad_key_value_flags_do_not_echo_the_value() -> None:
    with pytest.raises(InvalidArgument) as caught:
        client_config.parse_key_values(["sasl.password"], "--consumer-config")
    assert "--consumer-config expects KEY=VALUE" in caught.value.message


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_librdkafka_logs_are_mapped_and_deduplicated(caplog: pytest.LogCaptureFixture) -> None:
    clock = _Clock()
    bridge = LibrdkafkaLogBridge(logging.getLogger("test.librdkafka"), window_s=60, clock=clock)
    bridge.add_secrets(["hunter2"])
    fail = (
        "[thrd:b:1/bootstrap]: b:1/bootstrap: Connect to ipv4#127.0.0.1:1 failed: "
        "Connection refused (after {}ms in state CONNECT)"
    )
    with caplog.at_level(logging.DEBUG, logger="test.librdkafka"):
        for attempt in range(50):
            bridge.log(
                logging.ERROR, "%s [%s] %s", "FAIL", "rdkafka#producer-1", fail.format(attempt)
            )
        clock.now = 61.0
        bridge.log(logging.ERROR, "%s [%s] %s", "FAIL", "rdkafka#producer-1", fail.format(7))
        bridge.log(logging.INFO, "%s [%s] %s", "CONF", "c", "password hunter2 in a message")
        bridge.log(logging.DEBUG, "%s [%s] %s", "PROTO", "c", "detail")
    levels = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert len(levels) == 4
    assert levels[0][0] == logging.WARNING  # librdkafka retries its errors itself
    assert levels[0][1].startswith("librdkafka FAIL: b:1/bootstrap: Connect to")
    assert "(49 more like it suppressed)" in levels[1][1]
    assert levels[2] == (logging.INFO, "librdkafka CONF: password [redacted] in a message")
    assert levels[3][0] == logging.DEBUG
