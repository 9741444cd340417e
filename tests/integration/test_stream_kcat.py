"""Acceptance 7: the classic example's usage with kcat.

    echo "path/to/image.jpg" | kcat -b <bootstrap> -P -t ImageInputTopic
    kcat -b <bootstrap> -C -t ImageOutputTopic

against a running ``streamserve stream --codec image`` (tiny ONNX colour classifier with
processing.json, built here; the real ImageNet model is built by ``streamserve models``).
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from streamserve.testing import StreamProcess, model_server
from tests.helpers import build_image_classifier, image_bytes

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("kcat") is None, reason="kcat is not installed"),
]


@pytest.mark.parametrize(
    "output_format, remote",
    [
        ("json", False),
        ("classic", False),
        ("classic", True),  # remote: the classic setup
    ],
)
def test_kcat_produce_path_and_consume_prediction(
    output_format: str, remote: bool, kafka_bootstrap: str, topic_factory, tmp_path: Path
) -> None:
    base_path = tmp_path / "models" / "colors"
    build_image_classifier(base_path / "1")
    image = tmp_path / "images" / "image.jpg"
    image.parent.mkdir()
    image.write_bytes(image_bytes((20, 30, 230), image_format="JPEG"))
    source, sink = topic_factory(1, "ImageInputTopic"), topic_factory(1, "ImageOutputTopic")
    args = [
        "--bootstrap-servers",
        kafka_bootstrap,
        "--input-topic",
        source,
        "--output-topic",
        sink,
        "--group-id",
        f"g-{source}",
        "--codec",
        "image",
        "--output-format",
        output_format,
        "--fetch-allowed-root",
        str(image.parent),
    ]
    with contextlib.ExitStack() as stack:
        if remote:
            server = stack.enter_context(model_server("colors", base_path, tmp_path / "serve.log"))
            server.wait_ready(model="colors")
            args += ["--model-server", server.grpc_url, "--model-name", "colors"]
        else:
            args += ["--model-base-path", str(base_path)]
        stream = stack.enter_context(StreamProcess(args, tmp_path / "stream.log"))
        stream.wait_ready()
        subprocess.run(
            f'echo "{image}" | kcat -b {kafka_bootstrap} -P -t {source}',
            shell=True,
            check=True,
            timeout=30,
        )
        consumed = subprocess.run(  # -c 1: waits for the first prediction (bounded by timeout)
            [
                "kcat",
                "-b",
                kafka_bootstrap,
                "-C",
                "-t",
                sink,
                "-o",
                "beginning",
                "-c",
                "1",
                "-q",
                "-X",
                "isolation.level=read_committed",
            ],
            capture_output=True,
            check=True,
            timeout=60,
        )
    line = consumed.stdout.decode().strip()
    print(f"kcat -C printed: {line}")
    if output_format == "classic":
        assert re.fullmatch(r"\[blue=[0-9.e-]+, (red|green)=[0-9.e-]+\]", line), line
    else:
        document = json.loads(line)
        assert document["source"] == str(image)
        assert document["predictions"][0]["label"] == "blue"
        assert document["model"] == {"name": "colors", "version": 1}
