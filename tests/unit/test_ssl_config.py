"""``--ssl_config_file``: TF Serving's SSLConfig text proto, parsed and checked."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamserve.errors import InvalidArgument
from streamserve.server.tls import load_ssl_config_file, parse_ssl_config
from tests.helpers import make_certificates


def test_parses_pem_contents_and_builds_both_contexts(tmp_path: Path) -> None:
    certs = make_certificates(tmp_path)
    config = parse_ssl_config(certs.ssl_config(client_verify=True))
    assert config.server_key == certs.server_key.read_text() and config.client_verify
    assert config.grpc_credentials() is not None
    context = config.ssl_context()
    assert context.verify_mode.name == "CERT_REQUIRED"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('server_cert: "x"', "server_key and server_cert are required"),
        ('server_key: "k" server_cert: "c" client_verify: true', "client_verify needs custom_ca"),
        ("server_key: 3 bogus {", "not an SSLConfig text proto"),
    ],
)
def test_bad_configs_are_named_errors(text: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        parse_ssl_config(text)


def test_unusable_key_is_reported_without_quoting_it(tmp_path: Path) -> None:
    config = parse_ssl_config('server_key: "SECRET-KEY-MATERIAL" server_cert: "not a cert"')
    with pytest.raises(InvalidArgument) as caught:
        config.ssl_context()
    assert "SECRET-KEY-MATERIAL" not in caught.value.message


def test_missing_file_names_the_flag(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="--ssl_config_file"):
        load_ssl_config_file(tmp_path / "missing.config")
