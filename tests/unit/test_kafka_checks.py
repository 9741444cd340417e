"""LocalKafka's checks that fail before any broker starts, plus config and CLI basics."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

import pytest

from streamserve import cli
from streamserve.errors import SetupError
from streamserve.kafka import LocalKafka, config, jars
from streamserve.kafka.broker import _lock_data_dir
from streamserve.kafka.java import parse_major, require_java


def _fake_java(directory: Path, version_line: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    java = directory / "java"
    java.write_text(f"#!/bin/sh\necho '{version_line}' >&2\n")
    java.chmod(java.stat().st_mode | stat.S_IEXEC)
    return directory


@pytest.mark.parametrize(
    ("text", "major"), [("17.0.15", 17), ("1.8.0_292", 8), ("21-ea", 21), ("11", 11), ("25+36", 25)]
)
def test_parse_major(text: str, major: int) -> None:
    assert parse_major(text) == major


def test_java_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(SetupError, match=r"Java 17 or newer is needed .* no `java` was found"):
        require_java()


def test_java_too_old_on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JAVA_HOME", raising=False)
    bin_dir = _fake_java(tmp_path / "bin", 'openjdk version "11.0.22" 2024-01-16')
    monkeypatch.setenv("PATH", str(bin_dir))
    with pytest.raises(SetupError, match=r"needed .* but .*/java is Java 11\.0\.22"):
        require_java()


def test_java_too_old_in_java_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_java(tmp_path / "jdk8" / "bin", 'java version "1.8.0_292"')
    monkeypatch.setenv("JAVA_HOME", str(tmp_path / "jdk8"))
    with pytest.raises(SetupError, match=r"is Java 1\.8\.0_292"):
        require_java()


def test_java_home_without_java(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JAVA_HOME", str(tmp_path))
    with pytest.raises(SetupError, match=r"JAVA_HOME is .* not an executable"):
        require_java()


def test_localkafka_refuses_a_taken_port() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(SetupError, match=f"port {port} on 127.0.0.1 is already in use"):
            LocalKafka(port=port).start()


def test_localkafka_refuses_an_unwritable_data_dir(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(SetupError, match=r"data dir .*a-file/data is not writable: Not a direct"):
        LocalKafka(data_dir=blocker / "data").start()


def test_localkafka_refuses_a_data_dir_another_broker_uses(tmp_path: Path) -> None:
    held = _lock_data_dir(tmp_path)  # what a running broker holds
    try:
        with pytest.raises(SetupError, match="is in use by another running Kafka broker"):
            LocalKafka(data_dir=tmp_path).start()
    finally:
        os.close(held)


def test_fetch_without_maven_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMSERVE_CACHE", str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path / "nothing-here"))
    with pytest.raises(SetupError, match=r"Maven \(`mvn`\) is needed"):
        jars.ensure_jars()


def test_cached_jars_need_no_maven(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMSERVE_CACHE", str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path / "nothing-here"))  # no mvn: a call would fail
    lib = tmp_path / f"kafka-{jars.KAFKA_VERSION}" / "lib"
    lib.mkdir(parents=True)
    (lib / f"kafka_2.13-{jars.KAFKA_VERSION}.jar").write_bytes(b"")
    assert jars.ensure_jars() == lib


def test_pom_is_found_and_names_the_default_version() -> None:
    pom = jars.find_pom()
    assert pom.name == "pom.xml"
    assert f"<kafka.version>{jars.KAFKA_VERSION}</kafka.version>" in pom.read_text()


def test_single_node_properties(tmp_path: Path) -> None:
    props = config.server_properties(
        "127.0.0.1", 9092, 9093, tmp_path, extra={"num.io.threads": "2"}
    )
    assert props["process.roles"] == "broker,controller"
    assert props["controller.quorum.voters"] == "1@127.0.0.1:9093"
    assert props["advertised.listeners"] == "PLAINTEXT://127.0.0.1:9092"
    assert props["transaction.state.log.replication.factor"] == "1"
    assert props["transaction.state.log.min.isr"] == "1"
    assert props["offsets.topic.replication.factor"] == "1"
    assert props["num.io.threads"] == "2"
    text = config.write_properties(tmp_path / "p", props).read_text()
    assert f"log.dirs={tmp_path}\n" in text


def test_cluster_ids_look_like_kafkas() -> None:
    ids = {config.new_cluster_id() for _ in range(200)}
    assert len(ids) == 200
    assert all(len(i) == 22 and not i.startswith("-") for i in ids)


def test_cli_status_without_a_broker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("STREAMSERVE_RUN_DIR", str(tmp_path))
    assert cli.main(["kafka", "status"]) == 3
    assert capsys.readouterr().out.strip() == "not running"


def test_cli_create_topic_without_a_broker_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("STREAMSERVE_RUN_DIR", str(tmp_path))
    assert cli.main(["kafka", "create-topic", "x"]) == 2
    assert "error: no broker started by `streamserve kafka start` is running" in (
        capsys.readouterr().err
    )
