"""One logging set-up for every subcommand: ``--log-level`` and ``--log-format``."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import TextIO

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
LOG_FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def add_log_format_argument(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    parser.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default="text",
        help="log lines as text, or as one JSON object per line",
    )


class _StderrHandler(logging.StreamHandler[TextIO]):
    """The handler :func:`configure_logging` installs (and replaces when called again).

    Writes to whatever ``sys.stderr`` is at the time, like logging's last-resort handler,
    so a replaced ``sys.stderr`` (a test's capture) never leaves it writing to a closed file.
    """

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:
        pass


def configure_logging(level: str = "INFO", log_format: str = "text") -> None:
    """Send the root logger's records to stderr at ``level``, as text or JSON lines.

    Other handlers on the root logger (a test runner's, say) are left in place.
    """
    root = logging.getLogger()
    for previous in [h for h in root.handlers if isinstance(h, _StderrHandler)]:
        root.removeHandler(previous)
    handler = _StderrHandler()
    handler.setFormatter(_formatter(log_format))
    root.addHandler(handler)
    root.setLevel(level.upper())


def _formatter(log_format: str) -> logging.Formatter:
    if log_format == "json":
        from streamserve.stream.telemetry import JsonLogFormatter

        return JsonLogFormatter()
    return logging.Formatter(TEXT_FORMAT)


def print_error_line(message: str, log_format: str = "text") -> None:
    """A command's final error on stderr, one line: ``error: MESSAGE``, or with
    ``--log-format json`` the same as a JSON object like every other log line."""
    if log_format == "json":
        record = logging.LogRecord(
            "streamserve", logging.ERROR, __file__, 0, "error: %s", (message,), None
        )
        line = _formatter("json").format(record)
    else:
        line = f"error: {message}"
    print(line, file=sys.stderr, flush=True)
