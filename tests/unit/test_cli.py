"""The ``streamserve`` entry point: version, log flags, errors as one line and exit codes."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest

import streamserve
from streamserve import cli


def test_version_prints_the_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.strip() == f"streamserve {streamserve.__version__}"


@pytest.mark.parametrize(
    ("argv", "level"),
    [
        (["models", "build", "tiny", "--out", "x"], "INFO"),
        (["--log-level", "debug", "models", "build", "tiny", "--out", "x"], "DEBUG"),
        (["models", "build", "tiny", "--out", "x", "--log-level", "warning"], "WARNING"),
        (
            [
                "--log-level",
                "debug",
                "models",
                "build",
                "tiny",
                "--out",
                "x",
                "--log-level",
                "error",
            ],
            "ERROR",
        ),
    ],
)
def test_log_level_before_or_after_the_subcommand(argv: list[str], level: str) -> None:
    # no flag: no value, so a stream --config file may set it; main() falls back to INFO
    assert getattr(cli.build_parser().parse_args(argv), "log_level", "INFO") == level


def test_serve_takes_a_log_format() -> None:
    parser = cli.build_parser()
    assert parser.parse_args(["serve", "--log-format", "json"]).log_format == "json"
    assert parser.parse_args(["serve"]).log_format == "text"
    with pytest.raises(SystemExit):
        parser.parse_args(["serve", "--log-format", "xml"])


def test_json_log_format_writes_json_lines(capsys: pytest.CaptureFixture[str]) -> None:
    from streamserve.logs import configure_logging

    configure_logging("INFO", "json")
    try:
        logging.getLogger("streamserve.test").info("hello")
        line = capsys.readouterr().err.strip().splitlines()[-1]
    finally:
        configure_logging("WARNING", "text")
    assert '"message": "hello"' in line and '"level": "INFO"' in line


def test_models_build_without_the_models_extra_is_one_error_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx → ModuleNotFoundError
    code = cli.main(["models", "build", "tiny", "--out", str(tmp_path / "tiny")])
    assert code == cli.EXIT_MISSING_EXTRA == 4
    captured = capsys.readouterr()
    assert captured.err.strip().splitlines() == [
        "error: streamserve models build needs the 'models' extra (module 'onnx' is missing): "
        "pip install 'streamserve[models]'"
    ]
    assert "Traceback" not in captured.err
