"""Acceptance 7: the classic example's usage with kcat.

    echo "path/to/image.jpg" | kcat -b <bootstrap> -P -t ImageInputTopic
    kcat -b <bootstrap> -C -t ImageOutputTopic

against a running ``streamserve stream --codec image`` (tiny ONNX colour classifier with
processing.json, built here; the real ImageNet model is built by ``streamserve models``).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from streamserve.stream.testing import StreamProcess, build_image_classifier, image_bytes

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("kcat") is None, reason="kcat is not installed"),
]


@pytest.mark.parametrize("output_format", ["json", "classic"])
def test_kcat_produce_path_and_consume_prediction(
    output_format: str, kafka_bootstrap: str, topic_factory, tmp_path: Path
) -> None:
    build_image_classifier(tmp_path / "models" / "colors" / "1")
    image = tmp_path / "images" / "image.jpg"
    image.parent.mkdir()
    image.write_bytes(image_bytes((20, 30, 230), image_format="JPEG"))
    source, sink = topic_factory(1, "ImageInputTopic"), topic_factory(1, "ImageOutputTopic")
    args = ["--bootstrap-servers", kafka_bootstrap, "--input-topic", source,
            "--output-topic", sink, "--group-id", f"g-{source}", "--codec", "image",
            "--output-format", output_format, "--model-base-path",
            str(tmp_path / "models" / "colors"), "--fetch-allowed-root", str(image.parent)]

    with StreamProcess(args, tmp_path / "stream.log") as stream:
        stream.wait_ready()
        subprocess.run(f'echo "{image}" | kcat -b {kafka_bootstrap} -P -t {source}',
                       shell=True, check=True, timeout=30)
        consumed = subprocess.run(  # -c 1: waits for the first prediction (bounded by timeout)
            ["kcat", "-b", kafka_bootstrap, "-C", "-t", sink, "-o", "beginning", "-c", "1",
             "-q", "-X", "isolation.level=read_committed"],
            capture_output=True, check=True, timeout=60,
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
