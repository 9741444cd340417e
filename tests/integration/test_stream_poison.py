"""Acceptance 5: poison records each land in the DLQ with a reason; good ones around them
are processed (image codec, embedded image model, real broker and processes, a real local
HTTP server for URLs)."""

from __future__ import annotations

import base64
import functools
import http.server
import io
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from streamserve.testing import StreamProcess, produce, read_topic
from tests.helpers import build_image_classifier, image_bytes

pytestmark = pytest.mark.integration

RED, GREEN, BLUE = (240, 10, 10), (10, 230, 20), (5, 5, 220)


@pytest.fixture(scope="module")
def colors_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("models") / "colors"
    build_image_classifier(base / "1")
    return base


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from PIL import Image

    folder = tmp_path_factory.mktemp("images")
    (folder / "red.png").write_bytes(image_bytes(RED))
    (folder / "green.jpg").write_bytes(image_bytes(GREEN, image_format="JPEG"))
    (folder / "notes.txt").write_text("this is not an image\n")
    buffer = io.BytesIO()
    Image.new("1", (10_000, 5_000)).save(buffer, format="PNG")  # 50 megapixels, ~10 kB
    (folder / "huge.png").write_bytes(buffer.getvalue())
    return folder


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def http_images(image_dir: Path) -> Iterator[str]:
    handler = functools.partial(_QuietHandler, directory=str(image_dir))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _truncated_png() -> bytes:
    """A PNG whose header is fine (passes the content check) but whose pixels are cut off:
    only the model's image decoding notices, so the model call rejects it."""
    data = image_bytes(BLUE, size=(64, 64))
    return data[:60]


@pytest.mark.parametrize("guarantee", ["exactly-once", "at-least-once"])
def test_poison_records_go_to_the_dlq_and_the_stream_goes_on(
    guarantee: str,
    colors_model: Path,
    image_dir: Path,
    http_images: str,
    kafka_bootstrap: str,
    topic_factory,
    tmp_path: Path,
) -> None:
    source, sink = topic_factory(1, "img-in"), topic_factory(1, "img-out")
    dlq = topic_factory(1, "dlq")
    b64_red = base64.b64encode(image_bytes(RED)).decode()
    records: list[tuple[str, bytes, str | None]] = [  # key, value, expected top label or None
        ("good-path", str(image_dir / "red.png").encode(), "red"),
        ("bad-json", b'{"id": "p1", "url": ', None),
        ("good-url", f'{{"id": "g2", "url": "{http_images}/green.jpg"}}'.encode(), "green"),
        ("missing-file", str(image_dir / "missing.png").encode(), None),
        ("good-bytes", image_bytes(BLUE), "blue"),
        ("http-404", f"{http_images}/nope.png".encode(), None),
        ("good-b64", f'{{"id": "g4", "b64": "{b64_red}"}}'.encode(), "red"),
        ("binary-garbage", bytes(range(256)) * 4, None),
        ("not-an-image-file", str(image_dir / "notes.txt").encode(), None),
        ("good-file-url", f"file://{image_dir / 'green.jpg'}".encode(), "green"),
        ("50-megapixels", str(image_dir / "huge.png").encode(), None),
        ("metadata-ssrf", b"http://169.254.169.254/latest/meta-data/iam", None),
        ("model-rejects", _truncated_png(), None),
        ("good-last", str(image_dir / "red.png").encode(), "red"),
    ]
    produce(kafka_bootstrap, source, ((0, key.encode(), value) for key, value, _ in records))

    args = [
        "--bootstrap-servers",
        kafka_bootstrap,
        "--input-topic",
        source,
        "--output-topic",
        sink,
        "--dlq-topic",
        dlq,
        "--group-id",
        f"g-{source}",
        "--guarantee",
        guarantee,
        "--instance-id",
        "poison",
        "--codec",
        "image",
        "--model-base-path",
        str(colors_model),
        "--model-name",
        "colors",
        "--fetch-allowed-root",
        str(image_dir),
        "--fetch-allowed-host",
        "127.0.0.1",
        "--max-batch-size",
        "8",
    ]
    good = [(key, label) for key, _, label in records if label]
    poison = {key: value for key, value, label in records if not label}
    with StreamProcess(args, tmp_path / "stream.log") as stream:
        stream.wait_ready()
        outputs = read_topic(kafka_bootstrap, sink, len(good), timeout=60)
        dead = read_topic(kafka_bootstrap, dlq, len(poison), timeout=60)
    log = stream.log_tail()

    assert [(o.key.decode(), o.json()["predictions"][0]["label"]) for o in outputs] == good, log
    assert all(o.json()["mode"] == "embedded" for o in outputs)
    assert sorted(d.key.decode() for d in dead) == sorted(poison), log
    reasons = {}
    for record in dead:
        key = record.key.decode()
        assert record.value == poison[key], f"{key}: DLQ must carry the original value"
        for header in ("stage", "reason", "exception"):
            assert record.headers.get(f"streamserve.error.{header}"), (key, record.headers)
        reasons[key] = (
            record.headers["streamserve.error.stage"].decode(),
            record.headers["streamserve.error.reason"].decode(),
        )
    print("\n".join(f"{key}: {stage}: {reason}" for key, (stage, reason) in reasons.items()))
    assert reasons["bad-json"][0] == "decode"
    assert reasons["missing-file"][0] == "fetch" and "not readable" in reasons["missing-file"][1]
    assert reasons["http-404"][0] == "fetch" and "404" in reasons["http-404"][1]
    assert reasons["binary-garbage"][0] == "decode"
    assert reasons["not-an-image-file"][0] == "image"
    assert reasons["50-megapixels"][0] == "image" and "pixels" in reasons["50-megapixels"][1]
    stage, reason = reasons["metadata-ssrf"]
    assert stage == "fetch" and "169.254.169.254" in reason
    assert reasons["model-rejects"][0] == "predict"
