"""``streamserve stream`` settings: a key per flag, TOML file < environment < flags,
``--print-config`` with secrets redacted, clear errors for unknown keys and bad values."""

from __future__ import annotations

import argparse
import tomllib
from pathlib import Path

import pytest

from streamserve import cli
from streamserve.stream.settings import NOT_KEYS, option_actions

TOML = """\
input_topic = "ImageInputTopic"
output_topic = "ImageOutputTopic"
group_id = "images"
model_base_path = "/models/imagenet"
max_batch_size = 16
max_in_flight = 2
fetch_allowed_root = ["/data/images"]
no_create_topics = true

[kafka]
bootstrap.servers = "broker-1:9093,broker-2:9093"
"security.protocol" = "SASL_SSL"
sasl.mechanisms = "SCRAM-SHA-512"
sasl.username = "streamserve"
sasl.password = "from-the-file"

[kafka.consumer]
"fetch.min.bytes" = 1024
"""


def _stream_parser() -> argparse.ArgumentParser:
    parser = cli.build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    stream: argparse.ArgumentParser = subparsers.choices["stream"]
    return stream


def test_every_flag_has_a_key() -> None:
    stream = _stream_parser()
    keys = option_actions(stream)
    flags = [
        option
        for action in stream._actions
        for option in action.option_strings
        if option.startswith("--") and action.dest not in NOT_KEYS
    ]
    assert len(flags) > 40
    for flag in flags:
        key = flag[2:].replace("-", "_")
        assert key in keys, flag
    assert {"input_topic", "model_base_path", "log_level", "log_format", "kafka_config"} <= set(
        keys
    )


def test_printed_config_is_a_config_file_that_uses_every_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, printed, text = _print_config(["--metrics-port", "0", "--model-version", "1"], capsys)
    assert code == 0, text
    config = tmp_path / "printed.toml"
    config.write_text(text)
    keys = set(option_actions(_stream_parser()))
    unset = {"bootstrap_servers", "kafka_config", "input_topic", "output_topic", "group_id"}
    unset |= {"dlq_topic", "instance_id", "model_base_path", "model_server", "model_name"}
    unset |= {"model_label", "signature_name", "fallback_model_base_path"}
    unset |= {"fallback_model_name", "codec", "schema_registry_url", "message_type"}
    unset |= {"input_schema", "output_schema"}
    unset |= {"model_server_ca", "model_server_cert", "model_server_key", "health_stall_timeout_s"}
    assert set(printed) - {"kafka"} == keys - unset  # None (unset) values are left out
    again_code, again, _ = _print_config(["--config", str(config)], capsys)
    assert again_code == 0 and again == printed


def test_help_shows_defaults() -> None:
    help_text = _stream_parser().format_help()
    assert "(default: 32)" in help_text  # --max-batch-size
    assert "(default: exactly-once)" in help_text


def _print_config(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> tuple[int, dict[str, object], str]:
    code = cli.main(["stream", *argv, "--print-config"])
    out = capsys.readouterr()
    return code, (tomllib.loads(out.out) if code == 0 else {}), out.out + out.err


def test_file_then_environment_then_flags(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "stream.toml"
    config.write_text(TOML)
    monkeypatch.setenv("STREAMSERVE_STREAM_MAX_IN_FLIGHT", "7")
    monkeypatch.setenv("STREAMSERVE_STREAM_GROUP_ID", "from-env")
    monkeypatch.setenv("STREAMSERVE_KAFKA_SASL_PASSWORD", "from-the-environment")
    code, printed, text = _print_config(
        ["--config", str(config), "--group-id", "from-flag"], capsys
    )
    assert code == 0, text
    assert printed["input_topic"] == "ImageInputTopic"  # file
    assert printed["max_batch_size"] == 16  # file over default
    assert printed["max_in_flight"] == 7  # environment over file
    assert printed["group_id"] == "from-flag"  # flag over environment
    assert printed["no_create_topics"] is True
    assert printed["fetch_allowed_root"] == ["/data/images"]
    kafka = printed["kafka"]
    assert isinstance(kafka, dict)
    assert kafka["bootstrap.servers"] == "broker-1:9093,broker-2:9093"
    assert kafka["sasl.password"] == "[redacted]"
    assert kafka["consumer"] == {"fetch.min.bytes": "1024"}
    assert "from-the-file" not in text and "from-the-environment" not in text


def test_print_config_redacts_per_role_flags(capsys: pytest.CaptureFixture[str]) -> None:
    code, printed, text = _print_config(["--producer-config", "sasl.password=pw1"], capsys)
    assert code == 0
    assert printed["producer_config"] == ["sasl.password=[redacted]"]
    assert "pw1" not in text


@pytest.mark.parametrize(
    ("toml", "env", "complaint"),
    [
        ("input_topicz = 'x'\n", {}, "input_topicz: unknown setting"),
        ("max_batch_size = 'many'\n", {}, "max_batch_size: invalid value 'many'"),
        ("guarantee = 'maybe'\n", {}, "'maybe' is not one of exactly-once, at-least-once"),
        ("no_create_topics = 'yes'\n", {}, "expected true or false"),
        ("", {"STREAMSERVE_STREAM_MAX_IN_FLIGHT": "x"}, "STREAMSERVE_STREAM_MAX_IN_FLIGHT"),
        ("[kafka\n", {}, "is not valid TOML"),
    ],
)
def test_bad_settings_are_one_error_line(
    toml: str,
    env: dict[str, str],
    complaint: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = tmp_path / "stream.toml"
    config.write_text(toml)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    code = cli.main(["stream", "--config", str(config), "--print-config"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == cli.EXIT_ERROR
    assert len(err) == 1 and err[0].startswith("error: ") and complaint in err[0], err


@pytest.mark.parametrize(
    ("argv", "complaint"),
    [
        (["--bootstrap-servers", "b:1"], "missing --input-topic, --output-topic, --group-id"),
        (["--input-topic", "i", "--output-topic", "o", "--group-id", "g"], "bootstrap servers"),
        (
            [
                *("--bootstrap-servers", "b:1", "--input-topic", "i"),
                *("--output-topic", "o", "--group-id", "g"),
            ],
            "exactly one of --model-base-path and --model-server",
        ),
    ],
)
def test_missing_settings_are_named(
    argv: list[str], complaint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["stream", *argv]) == cli.EXIT_ERROR
    assert complaint in capsys.readouterr().err


EVENTS_TOML = """
input_format = "avro"
output_format = "enriched"

[features]
x = ["amount", "age", "merchant.risk"]
category = "merchant.category"

[features.defaults]
"merchant.risk" = 0.5

[outputs]
fraud_score = "probabilities[1]"
model_version = "$model_version"
"""


def test_feature_and_output_tables_print_back_and_the_registry_secret_is_redacted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "stream.toml"
    config.write_text(EVENTS_TOML)
    properties = tmp_path / "client.properties"
    properties.write_text(
        "bootstrap.servers=b:9092\nschema.registry.url=https://sr.example:8081\n"
        "basic.auth.credentials.source=USER_INFO\nbasic.auth.user.info=KEY:s3cr3t-registry\n"
    )
    code, printed, text = _print_config(
        ["--config", str(config), "--kafka-config", str(properties)], capsys
    )
    assert code == 0, text
    assert "s3cr3t-registry" not in text
    assert printed["features"] == {
        "x": ["amount", "age", "merchant.risk"],
        "category": "merchant.category",
        "defaults": {"merchant.risk": 0.5},
    }
    assert printed["outputs"] == {
        "fraud_score": "probabilities[1]",
        "model_version": "$model_version",
    }
    kafka = printed["kafka"]
    assert isinstance(kafka, dict) and kafka["basic.auth.user.info"] == "[redacted]"
    assert kafka["schema.registry.url"] == "https://sr.example:8081"


def test_registry_keys_never_reach_librdkafka(tmp_path: Path) -> None:
    from streamserve.kafka import client_config

    properties = tmp_path / "client.properties"
    properties.write_text("bootstrap.servers=b:9092\nschema.registry.url=http://sr:8081\n")
    kafka = client_config.load(
        config_file=properties, environ={"STREAMSERVE_KAFKA_BASIC_AUTH_USER_INFO": "k:s"}
    )
    assert kafka.for_role("consumer") == {"bootstrap.servers": "b:9092"}
    assert kafka.registry_properties() == {
        "schema.registry.url": "http://sr:8081",
        "basic.auth.user.info": "k:s",
    }
    assert "k:s" in kafka.secret_values()
