"""The README's ``streamserve.testing`` example, run as written (with a 2-wide tiny model),
plus a model server from :func:`streamserve.testing.model_server` as the remote target."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from streamserve.testing import (
    BOOTSTRAP_ENV,
    StreamProcess,
    kafka_broker,
    model_server,
    produce,
    read_topic,
    unique_topic,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def kafka(kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv(BOOTSTRAP_ENV, kafka_bootstrap)  # reuse the session's broker
    with kafka_broker() as bootstrap:
        yield bootstrap


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from streamserve.models.toy import build_tiny

    base = tmp_path_factory.mktemp("models") / "tiny"
    build_tiny(base / "1", width=2)
    return base


@pytest.mark.parametrize("where", ["embedded", "remote"])
def test_readme_example(kafka: str, tiny: Path, tmp_path: Path, where: str) -> None:
    source, sink = unique_topic(kafka, "in"), unique_topic(kafka, "out")
    args = ["--bootstrap-servers", kafka, "--input-topic", source, "--output-topic", sink,
            "--group-id", f"g-{source}"]  # fmt: skip
    with contextlib.ExitStack() as stack:
        if where == "remote":
            server = stack.enter_context(model_server("tiny", tiny, tmp_path / "serve.log"))
            server.wait_ready(model="tiny")
            args += ["--model-server", server.grpc_url, "--model-name", "tiny"]
        else:
            args += ["--model-base-path", str(tiny)]
        stream = stack.enter_context(StreamProcess(args, tmp_path / "stream.log"))
        stream.wait_ready()
        produce(kafka, source, [(None, b"k1", b'{"id": 1, "inputs": {"x": [[0.5, 1.5]]}}')])
        [output] = read_topic(kafka, sink, min_count=1)
    assert output.json()["id"] == 1, stream.log_tail()
    assert output.json()["mode"] == where
    assert output.key == b"k1"
