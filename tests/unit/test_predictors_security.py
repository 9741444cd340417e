"""Client TLS and headers: ``{env:..}``/``{file:..}`` values, named errors, no leaks."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamserve.errors import InvalidArgument
from streamserve.predictors.factory import parse_targets
from streamserve.predictors.grpc_channel import split_grpc_target
from streamserve.predictors.security import ClientSecurity, parse_header
from tests.helpers import make_certificates


def test_header_values_come_from_the_environment_or_a_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODEL_TOKEN", "abc")
    token_file = tmp_path / "token"
    token_file.write_text("from-file\n")
    assert parse_header("Authorization=Bearer {env:MODEL_TOKEN}") == (
        "Authorization",
        "Bearer abc",
    )
    assert parse_header(f"x-key={{file:{token_file}}}") == ("x-key", "from-file")
    assert parse_header("x-plain=value=with=equals") == ("x-plain", "value=with=equals")


def test_header_errors_name_the_source_not_a_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOT_SET_ANYWHERE", raising=False)
    with pytest.raises(InvalidArgument, match="NOT_SET_ANYWHERE is not set"):
        parse_header("authorization=Bearer {env:NOT_SET_ANYWHERE}")
    with pytest.raises(InvalidArgument, match="cannot read /nonexistent/token"):
        parse_header("authorization={file:/nonexistent/token}")
    with pytest.raises(InvalidArgument, match="NAME=VALUE"):
        parse_header("no equals sign")
    monkeypatch.setenv("MULTI", "a\nb")
    with pytest.raises(InvalidArgument, match="several lines") as caught:
        parse_header("x={env:MULTI}")
    assert "a\nb" not in caught.value.message


def test_tls_files_are_read_and_pairs_required(tmp_path: Path) -> None:
    certs = make_certificates(tmp_path)
    security = ClientSecurity.from_files(certs.ca, certs.client_cert, certs.client_key)
    assert security.ca == certs.ca.read_bytes()
    assert security.ssl_context() is not None and security.grpc_credentials() is not None
    with pytest.raises(InvalidArgument, match="needs its key"):
        ClientSecurity.from_files(certs.ca, certs.client_cert, None)
    with pytest.raises(InvalidArgument, match="cannot read the CA file"):
        ClientSecurity.from_files(tmp_path / "missing.pem")


def test_grpc_metadata_names_are_lower_case() -> None:
    security = ClientSecurity(headers=(("Authorization", "Bearer x"),))
    assert security.grpc_metadata() == (("authorization", "Bearer x"),)


def test_tls_targets_are_recognised() -> None:
    assert parse_targets("grpcs://h:1,https://h:2,grpc://h:3") == [
        "grpcs://h:1",
        "https://h:2",
        "grpc://h:3",
    ]
    assert split_grpc_target("grpcs://h:1") == ("h:1", True)
    assert split_grpc_target("h:1") == ("h:1", False)
    with pytest.raises(InvalidArgument):
        parse_targets("ftp://h:1")
