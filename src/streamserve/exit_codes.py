"""Every exit status a ``streamserve`` command can end with: the one table.

The CLI modules return these members (``streamserve.cli.EXIT_ERROR`` and the other
``EXIT_*`` names are aliases of them), and the documentation's exit-code reference is
generated from :data:`MEANINGS`, so the page and the code cannot disagree.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    NOT_SUCCEEDED = 1
    ERROR = 2
    NOT_RUNNING = 3
    MISSING_EXTRA = 4
    KAFKA_CONNECT = 5
    MODEL_LOAD_FAILED = 6
    STOP_FORCED = 70  # EX_SOFTWARE: the stop overran its bound and was forced
    KAFKA_FATAL = 75  # EX_TEMPFAIL: Kafka clients unrecoverable in-process; restart
    INTERRUPTED = 130  # 128 + SIGINT, as shells report it


MEANINGS: dict[ExitCode, tuple[str, str]] = {
    ExitCode.OK: ("every command", "success"),
    ExitCode.NOT_SUCCEEDED: (
        "`demo`, `kafka status`",
        "the command ran but did not succeed: an incomplete demo, a broker that does not "
        "answer or a cluster with nodes down",
    ),
    ExitCode.ERROR: (
        "every command",
        "a usage, configuration or set-up error, explained on one `error:` line",
    ),
    ExitCode.NOT_RUNNING: ("`kafka status`", "the broker is not running"),
    ExitCode.MISSING_EXTRA: (
        "every command",
        "an optional extra is missing; the `error:` line says which "
        "`pip install 'streamserve[...]'`",
    ),
    ExitCode.KAFKA_CONNECT: (
        "`stream`, `kafka create-topic|delete-topic|status`",
        "cannot connect or authenticate to Kafka: no broker answered within "
        "`--kafka-connect-timeout-s`, the credentials were refused, or the TLS handshake "
        "failed (one `error:` line)",
    ),
    ExitCode.MODEL_LOAD_FAILED: (
        "`serve`, embedded `stream`",
        "a model the command was started with cannot load (`serve`'s initial models, an "
        "embedded `stream`'s model); the `error:` line quotes the load error",
    ),
    ExitCode.STOP_FORCED: (
        "`stream`",
        "a stop did not finish within `--shutdown-timeout-s` + 10 s and was forced "
        "(uncommitted work is redone by the next owner)",
    ),
    ExitCode.KAFKA_FATAL: (
        "`stream`",
        "the Kafka clients broke and rebuilding them in-process kept failing (more than 5 "
        "rebuilds in 5 minutes): restart it",
    ),
    ExitCode.INTERRUPTED: ("every command", "interrupted (Ctrl-C, SIGINT)"),
}
"""Exit status → (the commands that use it, what it means), in Markdown."""
