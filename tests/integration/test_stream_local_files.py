"""Issue 12, defect 1: a record cannot read local files the operator did not allow.

The processor runs with its working directory at ``/`` and, separately, in a directory
holding a planted secret. Neither directory is an allowed root (there are no implicit
roots): records naming ``/etc/passwd``, ``file:///etc/passwd``, ``/proc/self/cmdline``
or the secret land in the DLQ with a reason that quotes none of the file's bytes, and
good records around them come out (real broker, real processor process).
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from pathlib import Path

import pytest

from streamserve.testing import StreamProcess, produce, read_topic
from tests.helpers import build_image_classifier, image_bytes

pytestmark = pytest.mark.integration

RED, BLUE = (240, 10, 10), (5, 5, 220)
SECRET = b"TOPSECRET-7f3c9a1e-do-not-leak\n"


@pytest.fixture(scope="module")
def colors_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("models") / "colors"
    build_image_classifier(base / "1")
    return base


def _leaks(reason: str, content: bytes) -> bool:
    """Whether ``reason`` quotes the start of ``content`` (raw or as a bytes repr) or any
    of its lines/fields of 8 characters or more."""
    head = content[:8]
    pieces = [head.decode("latin-1"), repr(head)[2:-1]]
    pieces += [p.decode("latin-1") for p in content.replace(b"\0", b"\n").split(b"\n")]
    return any(len(piece) >= 8 and piece in reason for piece in pieces)


@pytest.mark.parametrize("where", ["root", "secret-dir"])
def test_records_cannot_read_local_files(
    where: str,
    colors_model: Path,
    kafka_bootstrap: str,
    topic_factory: Callable[..., str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    secret_dir = tmp_path / "cwd"
    secret_dir.mkdir()
    (secret_dir / "secret.txt").write_bytes(SECRET)
    cwd = Path("/") if where == "root" else secret_dir
    source, sink, dlq = topic_factory(1, "lf-in"), topic_factory(1, "lf-out"), topic_factory(1)
    b64_red = base64.b64encode(image_bytes(RED)).decode()
    secret = str(secret_dir / "secret.txt")
    poison = {
        "etc-passwd": (b"/etc/passwd", Path("/etc/passwd").read_bytes()),
        "file-url-passwd": (b"file:///etc/passwd", Path("/etc/passwd").read_bytes()),
        "proc-cmdline": (b"/proc/self/cmdline", b"-m\0streamserve\0stream\0"),
        "secret-path": (secret.encode(), SECRET),
        "secret-file-url": (f"file://{secret}".encode(), SECRET),
        "secret-relative": (b"secret.txt", SECRET),
        "secret-json": (f'{{"id": "s", "path": "{secret}"}}'.encode(), SECRET),
    }
    records = [("good-first", image_bytes(BLUE))]
    for key, (value, _) in poison.items():
        records += [(key, value), (f"good-after-{key}", f'{{"b64": "{b64_red}"}}'.encode())]
    produce(kafka_bootstrap, source, ((0, key.encode(), value) for key, value in records))

    args = [
        *("--bootstrap-servers", kafka_bootstrap, "--input-topic", source),
        *("--output-topic", sink, "--dlq-topic", dlq, "--group-id", f"g-{source}"),
        *("--instance-id", f"local-files-{where}", "--codec", "image"),
        *("--model-base-path", str(colors_model), "--model-name", "colors"),
    ]
    monkeypatch.chdir(cwd)  # the processor inherits it
    good = [key for key, _ in records if key.startswith("good")]
    with StreamProcess(args, tmp_path / "stream.log") as stream:
        stream.wait_ready()
        outputs = read_topic(kafka_bootstrap, sink, len(good), timeout=60)
        dead = read_topic(kafka_bootstrap, dlq, len(poison), timeout=60)
    log = stream.log_tail()

    assert [(o.key or b"").decode() for o in outputs] == good, log
    assert sorted((d.key or b"").decode() for d in dead) == sorted(poison), log
    for record in dead:
        key = (record.key or b"").decode()
        stage = record.headers["streamserve.error.stage"].decode()
        reason = record.headers["streamserve.error.reason"].decode()
        print(f"{key}: {stage}: {reason}")
        content = poison[key][1]
        assert stage == "fetch", (key, reason)
        assert not _leaks(reason, content), (key, reason)
        assert "allowed roots" in reason, (key, reason)
