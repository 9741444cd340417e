"""``streamserve demo`` options reach the stream processor: guarantee, commit interval,
the demo's low-latency settings, and the user's own client settings after them."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from streamserve import cli, demo
from streamserve.kafka.client_config import KafkaClientConfig
from streamserve.stream import ProcessorConfig


def _args(*argv: str) -> argparse.Namespace:
    return cli.build_parser().parse_args(["demo", *argv])


def _processor_args(*argv: str) -> list[str]:
    args = _args(*argv)
    kafka = KafkaClientConfig.for_bootstrap("127.0.0.1:9092")
    kafka_flags, _ = demo._kafka_args(kafka, args)
    return demo._processor_args(kafka_flags, "embedded", [], [Path("/images")], args)


def test_defaults_match_the_stream_processor() -> None:
    args = _args()
    processor = ProcessorConfig("127.0.0.1:9092", "i", "o", "g")
    assert args.guarantee == processor.guarantee == "exactly-once"
    assert args.commit_interval_ms == processor.commit_interval_ms
    assert args.rate == 5.0 and args.mode == "both"


def test_guarantee_and_commit_interval_reach_the_processor() -> None:
    flags = _processor_args("--guarantee=at-least-once", "--commit-interval-ms=20")
    assert "--guarantee=at-least-once" in flags
    assert "--commit-interval-ms=20" in flags
    assert "--bootstrap-servers=127.0.0.1:9092" in flags


def test_low_latency_settings_and_the_users_settings_win() -> None:
    flags = _processor_args("--producer-config=linger.ms=20", "--consumer-config=x.y=1")
    assert "--max-batch-delay-ms=0" in flags
    ours = flags.index("--producer-config=linger.ms=0")
    theirs = flags.index("--producer-config=linger.ms=20")
    assert ours < theirs  # later flags win in `streamserve stream`
    assert "--consumer-config=x.y=1" in flags
    assert f"--consumer-config=fetch.wait.max.ms={demo.FETCH_WAIT_MAX_MS}" in flags


def test_a_secret_client_setting_reaches_the_processor_by_environment_not_argv() -> None:
    args = _args("--producer-config=sasl.password=hunter2", "--producer-config=acks=1")
    flags, env = demo._kafka_args(KafkaClientConfig.for_bootstrap("127.0.0.1:9092"), args)
    assert not any("hunter2" in flag for flag in flags)
    assert "--producer-config=acks=1" in flags
    assert env == {"STREAMSERVE_KAFKA_SASL_PASSWORD": "hunter2"}


@pytest.mark.parametrize("flag", ["--rate=0", "--commit-interval-ms=-1"])
def test_non_positive_rates_are_usage_errors(flag: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["demo", flag]) == cli.EXIT_ERROR
    assert "must be above 0" in capsys.readouterr().err
