"""Issue 13: the stream processor, ``kafka create-topic`` and kcat on secured brokers.

One real broker per security mode, shared by the module's tests (module-scoped,
parametrised fixture: pytest runs each mode's tests together, one broker at a time):

- ``sasl_ssl``: SASL_SSL with SCRAM-SHA-512; credentials from the generated properties file;
- ``sasl_plaintext``: SASL_PLAINTEXT with PLAIN; credentials from ``STREAMSERVE_KAFKA_*``
  environment variables only;
- ``mtls``: TLS with client certificates required; the properties file.

No credential is ever on a command line. The failure tests (wrong password, unknown CA,
wrong address) run against the SASL_SSL broker.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from streamserve import testing
from streamserve.kafka import LocalKafka, admin
from streamserve.kafka.security import BrokerSecurity
from streamserve.processes import streamserve_command
from streamserve.testing import StreamProcess, free_port, produce, read_topic, unique_topic
from tests.helpers import build_tiny_model

pytestmark = pytest.mark.integration

MODES = ["sasl_ssl", "sasl_plaintext", "mtls"]
RECORDS = 2000
PARTITIONS = 3
WIDTH = 64
RAW_LIBRDKAFKA_LINE = re.compile(r"^%\d+\|")
CONNECT_ERROR_EXIT = 5  # streamserve.cli.EXIT_KAFKA_CONNECT, documented there and in README


@pytest.fixture(scope="module", params=MODES)
def secured(request: pytest.FixtureRequest) -> Iterator[LocalKafka]:
    with testing.secured_kafka_broker(request.param) as kafka:
        yield kafka


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory, width=WIDTH)


@pytest.fixture(scope="module")
def grpc_server(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log_path = tmp_path_factory.mktemp("server") / "serve.log"
    with testing.model_server("tiny", tiny_model, log_path) as server:
        server.wait_ready(model="tiny")
        yield server.grpc_url


def credentials(kafka: LocalKafka) -> tuple[list[str], dict[str, str]]:
    """How a command gets the client settings: (flags, environment), never a secret in flags.

    SASL_PLAINTEXT: environment variables only; the other modes: ``--kafka-config FILE``.
    """
    if kafka.security_mode == "sasl_plaintext":
        env = {
            "STREAMSERVE_KAFKA_" + key.upper().replace(".", "_"): value
            for key, value in kafka.client_config.items()
        }
        return [], env
    assert kafka.client_properties_file is not None
    return ["--kafka-config", str(kafka.client_properties_file)], {}


def client_password(kafka: LocalKafka) -> str | None:
    assert kafka.security is not None
    return kafka.security.client_password or None


def _inputs(count: int) -> tuple[list[tuple[int, bytes, bytes]], dict[int, np.ndarray]]:
    rng = np.random.default_rng(13)
    records, rows = [], {}
    for i in range(count):
        x = rng.standard_normal((1, WIDTH)).astype(np.float32).round(4)
        rows[i] = x
        value = json.dumps({"id": i, "inputs": {"x": x.tolist()}}).encode()
        records.append((i % PARTITIONS, f"k{i}".encode(), value))
    return records, rows


@pytest.mark.parametrize("mode", ["embedded", "remote-grpc"])
def test_exactly_once_on_a_secured_broker(
    mode: str,
    secured: LocalKafka,
    tiny_model: Path,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    import onnxruntime

    kafka = secured.client_config
    source, sink = unique_topic(kafka, "in", PARTITIONS), unique_topic(kafka, "out", PARTITIONS)
    records, rows = _inputs(RECORDS)
    produce(kafka, source, records)
    if mode == "embedded":
        model_args = ["--model-base-path", str(tiny_model), "--model-name", "tiny"]
    else:
        grpc_url = request.getfixturevalue("grpc_server")
        model_args = ["--model-server", grpc_url, "--model-name", "tiny"]
    flags, env = credentials(secured)
    args = [
        *flags,
        "--input-topic",
        source,
        "--output-topic",
        sink,
        "--group-id",
        f"g-{source}",
        "--instance-id",
        "one",
        *model_args,
    ]
    log_path = tmp_path / "stream.log"
    with StreamProcess(args, log_path, env=env) as stream:
        stream.wait_ready()
        cmdline = Path(f"/proc/{stream.pid}/cmdline").read_bytes().decode()
        outputs = read_topic(kafka, sink, RECORDS, timeout=120)
    assert len(outputs) == RECORDS, stream.log_tail()
    ids = [output.json()["id"] for output in outputs]
    assert sorted(ids) == list(range(RECORDS)), "missing or duplicated outputs"
    session = onnxruntime.InferenceSession(str(tiny_model / "1" / "model.onnx"))
    for output in outputs:
        document = output.json()
        expected = session.run(None, {"x": rows[document["id"]]})[0]
        np.testing.assert_allclose(np.array(document["outputs"]["y"]), expected, atol=1e-4)

    password = client_password(secured)
    if password is not None:  # acceptance 2: not in argv, not anywhere in the whole log
        assert password not in cmdline
        assert password not in log_path.read_text()
        assert "sasl.password" not in cmdline


def test_create_topic_cli_on_the_same_listener(secured: LocalKafka, tmp_path: Path) -> None:
    flags, env = credentials(secured)
    name = f"cli-{secured.security_mode}-{free_port()}"
    result = _streamserve(["kafka", "create-topic", name, "--partitions", "2", *flags], env)
    assert result.returncode == 0, result.stderr
    assert f"topic {name} ready with 2 partition(s)" in result.stdout
    assert admin.wait_for_topic(secured.client_config, name) == 2


@pytest.mark.skipif(shutil.which("kcat") is None, reason="kcat is not installed")
def test_kcat_lists_the_secured_broker_with_the_generated_file(secured: LocalKafka) -> None:
    assert secured.client_properties_file is not None
    command = ["kcat", "-F", str(secured.client_properties_file), "-L", "-m", "20"]
    if secured.security_mode == "sasl_ssl" and _kcat_librdkafka() < (2, 6, 1):
        # librdkafka before 2.6.1 sends a SCRAM nonce Kafka 4.x rejects (librdkafka#4895);
        # the broker takes PLAIN for the same user over the same TLS listener.
        command += ["-X", "sasl.mechanisms=PLAIN"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert f"broker 1 at {secured.bootstrap_servers}" in result.stdout


def _kcat_librdkafka() -> tuple[int, ...]:
    version = subprocess.run(["kcat", "-V"], capture_output=True, text=True, check=False)
    found = re.search(r"librdkafka (\d+)\.(\d+)\.(\d+)", version.stdout + version.stderr)
    return tuple(int(part) for part in found.groups()) if found else (0, 0, 0)


# -- failures: one clear line, exit 5, no traceback, no raw librdkafka lines ------------------


def _wrong_password(kafka: LocalKafka, tmp_path: Path) -> tuple[list[str], dict[str, str]]:
    flags, _ = credentials(kafka)
    return flags, {"STREAMSERVE_KAFKA_SASL_PASSWORD": "not-the-password"}


def _unknown_ca(kafka: LocalKafka, tmp_path: Path) -> tuple[list[str], dict[str, str]]:
    other = BrokerSecurity.generate("ssl", tmp_path / "other-ca", "127.0.0.1")
    flags, _ = credentials(kafka)
    return flags, {"STREAMSERVE_KAFKA_SSL_CA_LOCATION": str(other.directory / "ca.pem")}


def _wrong_address(kafka: LocalKafka, tmp_path: Path) -> tuple[list[str], dict[str, str]]:
    flags, _ = credentials(kafka)
    return [*flags, "--bootstrap-servers", f"127.0.0.1:{free_port()}"], {}


FAILURES = {
    "wrong-password": (_wrong_password, "refused the credentials"),
    "unknown-ca": (_unknown_ca, "TLS handshake with Kafka at"),
    "wrong-address": (_wrong_address, "cannot connect to Kafka at 127.0.0.1:"),
}


@pytest.mark.parametrize("secured", ["sasl_ssl"], indirect=True)
@pytest.mark.parametrize("log_format", ["text", "json"])
@pytest.mark.parametrize("failure", list(FAILURES))
def test_connection_failures_end_in_one_clear_line(
    failure: str, log_format: str, secured: LocalKafka, tiny_model: Path, tmp_path: Path
) -> None:
    make, expected = FAILURES[failure]
    flags, env = make(secured, tmp_path)
    args = [
        "stream",
        *flags,
        "--kafka-connect-timeout-s",
        "5",
        "--log-format",
        log_format,
        "--input-topic",
        "in",
        "--output-topic",
        "out",
        "--group-id",
        "g",
        "--model-base-path",
        str(tiny_model),
    ]
    result = _streamserve(args, env)
    lines = result.stderr.splitlines()
    assert result.returncode == CONNECT_ERROR_EXIT, result.stderr
    assert "Traceback" not in result.stderr
    assert not [line for line in lines if RAW_LIBRDKAFKA_LINE.match(line)]
    if log_format == "json":
        documents = [json.loads(line) for line in lines]  # every line parses
        errors = [d["message"] for d in documents if d["level"] == "ERROR"]
    else:
        errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    assert errors[0].startswith("error: ") and expected in errors[0]
    assert "not-the-password" not in result.stderr
    print(f"{failure} ({log_format}): {errors[0]}")


def _streamserve(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        streamserve_command(*args),
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **env},
        check=False,
    )


def test_cli_start_secured_prints_its_client_file_and_stop_removes_the_secrets(
    tmp_path: Path,
) -> None:
    env = {"STREAMSERVE_RUN_DIR": str(tmp_path / "run")}
    data_dir = tmp_path / "data"
    started = _streamserve(
        ["kafka", "start", "--security", "mtls", "--data-dir", str(data_dir)], env
    )
    try:
        assert started.returncode == 0, started.stderr
        lines = started.stdout.strip().splitlines()
        bootstrap = lines[-1]
        properties = Path(next(line for line in lines if "client properties:" in line).split()[-1])
        settings = properties.read_text()
        assert f"bootstrap.servers={bootstrap}" in settings
        assert "security.protocol=SSL" in settings and "ssl.key.location=" in settings
        assert oct(properties.stat().st_mode & 0o777) == "0o600"
        status = _streamserve(["kafka", "status"], env)  # uses the generated client file
        assert status.returncode == 0 and "answering" in status.stdout
    finally:
        stopped = _streamserve(["kafka", "stop"], env)
    assert stopped.returncode == 0, stopped.stderr
    assert (data_dir / "kafka.log").is_file()  # the kept data dir stays ...
    assert not properties.parent.exists()  # ... without its certificates, keys and passwords
    assert not (data_dir / "server.properties").exists()
