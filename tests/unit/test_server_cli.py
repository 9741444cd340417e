"""``streamserve serve`` flags: TF Serving spellings, booleans, env vars, ServerOptions."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from streamserve.server.cli import configure, options_from_args

pytestmark = pytest.mark.timeout(30)


@pytest.fixture(autouse=True)
def no_model_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MODEL_NAME", raising=False)
    monkeypatch.delenv("MODEL_BASE_PATH", raising=False)


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    configure(parser)
    return parser.parse_args(list(argv))


def test_tfserving_flags_snake_and_dash_case() -> None:
    snake = parse(
        "--port=9000",
        "--rest_api_port=9001",
        "--model_name=m",
        "--model_base_path=/models/m",
        "--file_system_poll_wait_seconds=2",
        "--model_config_file_poll_wait_seconds=5",
        "--rest_api_timeout_in_ms=1500",
        "--grpc_max_message_bytes=1024",
    )
    dash = parse(
        "--port",
        "9000",
        "--rest-api-port=9001",
        "--model-name=m",
        "--model-base-path",
        "/models/m",
        "--file-system-poll-wait-seconds=2",
        "--model-config-file-poll-wait-seconds=5",
        "--rest-api-timeout-in-ms=1500",
        "--grpc-max-message-bytes=1024",
    )
    assert vars(snake) == vars(dash)
    options = options_from_args(snake)
    assert (options.grpc_port, options.rest_port) == (9000, 9001)
    assert (options.model_name, options.model_base_path) == ("m", "/models/m")
    assert options.file_system_poll_wait_seconds == 2.0
    assert options.model_config_file_poll_wait_seconds == 5.0
    assert options.rest_api_timeout_in_ms == 1500
    assert options.grpc_max_message_bytes == 1024


def test_defaults_and_rest_port_zero_turns_rest_off() -> None:
    options = options_from_args(parse("--model_base_path=/m"))
    assert (options.grpc_port, options.rest_port) == (8500, 8501)
    assert options_from_args(parse("--model_base_path=/m", "--rest_api_port=0")).rest_port is None


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ((), False),
        (("--enable_batching",), True),
        (("--enable_batching=true",), True),
        (("--enable-batching=false",), False),
        (("--enable_batching", "1"), True),
    ],
)
def test_boolean_flags(argv: tuple[str, ...], expected: bool) -> None:
    assert parse(*argv).enable_batching is expected


def test_part_two_flags_reach_server_options() -> None:
    options = options_from_args(
        parse(
            "--model_config_file=/c/models.config",
            "--enable_batching",
            "--batching_parameters_file=/c/batching.config",
            "--monitoring_config_file=/c/monitoring.config",
            "--allow_version_labels_for_unavailable_models",
            "--enable_model_warmup=false",
        )
    )
    assert options.enable_batching and options.batching_parameters_file == "/c/batching.config"
    assert options.monitoring_config_file == "/c/monitoring.config"
    assert options.allow_version_labels_for_unavailable_models
    assert not options.enable_model_warmup


def test_model_env_vars_like_tfserving_image(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODEL_NAME", "envmodel")
    monkeypatch.setenv("MODEL_BASE_PATH", "/env/path")
    args = parse()
    assert (args.model_name, args.model_base_path) == ("envmodel", "/env/path")
    assert parse("--model_name=flag").model_name == "flag"


def test_ignored_tfserving_flags_are_accepted(capsys: pytest.CaptureFixture[str]) -> None:
    options_from_args(parse("--model_base_path=/m", "--tensorflow_session_parallelism=4"))
    assert "--tensorflow_session_parallelism has no effect" in capsys.readouterr().err


def test_single_model_config_uses_absolute_base_path(tmp_path: Path) -> None:
    options = options_from_args(parse("--model_name=m", f"--model_base_path={tmp_path}"))
    [config] = options.model_configs()
    assert config.name == "m" and config.base_path == tmp_path


def test_no_model_is_a_clear_error() -> None:
    from streamserve.errors import InvalidArgument

    with pytest.raises(InvalidArgument, match="--model_base_path"):
        options_from_args(parse()).model_configs()


def test_workers_flag_defaults_to_one_and_must_be_positive() -> None:
    assert parse("--model_base_path=/m").workers == 1
    assert parse("--workers=4", "--model_base_path=/m").workers == 4
    with pytest.raises(SystemExit):
        parse("--workers=0", "--model_base_path=/m")


def test_reserved_port_is_shared_with_reuseport_listeners() -> None:
    import socket

    from streamserve.server.workers import reserved_port

    with reserved_port("127.0.0.1", 0) as port:
        with socket.socket() as listener:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            listener.bind(("127.0.0.1", port))  # a worker binds the reserved port too
            listener.listen()
        with socket.socket() as other, pytest.raises(OSError):
            other.bind(("127.0.0.1", port))  # anything else cannot take it
