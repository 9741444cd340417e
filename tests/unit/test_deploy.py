"""Offline checks of ``deploy/``: no cluster or container runtime is needed (or used).

- every Kubernetes manifest validates against the Kubernetes JSON schemas bundled by
  ``kubernetes-validate`` (strict: unknown fields fail), the base and the production
  overlay (its patch merged onto the base);
- the KEDA resources validate against ``deploy/schemas/keda.schema.json`` (written from
  KEDA's documented fields; KEDA publishes CRDs, not schemas ``kubernetes-validate`` has);
- every flag in the manifests and every key of the stream TOML is one the real argparse
  parsers (``streamserve.cli.build_parser()``) accept, and credentials arrive as
  ``STREAMSERVE_KAFKA_*`` variables from the Secret; the pod's command line, ConfigMap
  file and Secret variables resolve through ``streamserve stream --print-config`` (the
  real settings code) to the intended instance id, credentials and metrics port;
- every probe's port is the port the container's flags open, and its path / gRPC service
  is served by the code: a real in-process model server and the stream processor's
  operations endpoint answer them;
- the KEDA ScaledObject scales the StatefulSet on the group and topic of its TOML, with
  at most as many replicas as the input topic has partitions;
- the Containerfile is multi-stage, runs as a non-root user, installs with the README's
  install command and has ``streamserve`` as entrypoint.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from streamserve.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
BASE = DEPLOY / "kubernetes" / "base"
OVERLAYS = DEPLOY / "kubernetes" / "overlays"
KEDA_KINDS = ("ScaledObject", "TriggerAuthentication")
TOML_PATH = "/etc/streamserve/stream.toml"


def _documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _kustomization(folder: Path) -> dict[str, Any]:
    return dict(yaml.safe_load((folder / "kustomization.yaml").read_text()))


def _base_documents() -> list[dict[str, Any]]:
    return [doc for name in _kustomization(BASE)["resources"] for doc in _documents(BASE / name)]


def _one(kind: str, documents: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    [found] = [doc for doc in documents or _base_documents() if doc["kind"] == kind]
    return found


def _container(kind: str) -> dict[str, Any]:
    [container] = _one(kind)["spec"]["template"]["spec"]["containers"]
    return dict(container)


def _stream_toml() -> dict[str, Any]:
    configmap = _one("ConfigMap")
    return tomllib.loads(configmap["data"][Path(TOML_PATH).name])


def _merge(base: Any, patch: Any) -> Any:
    """A strategic-merge-patch subset: maps merge key by key, anything else replaces."""
    if not (isinstance(base, dict) and isinstance(patch, dict)):
        return patch
    merged = dict(base)
    for key, value in patch.items():
        merged[key] = _merge(base[key], value) if key in base else value
    return merged


def _overlay_documents(overlay: Path) -> Iterator[dict[str, Any]]:
    """The overlay's output: base documents with its patches, namespace and images."""
    kustomization = _kustomization(overlay)
    documents = _base_documents()
    for patch_ref in kustomization.get("patches", []):
        [patch] = _documents(overlay / patch_ref["path"])
        documents = [
            _merge(doc, patch)
            if (doc["kind"], doc["metadata"]["name"]) == (patch["kind"], patch["metadata"]["name"])
            else doc
            for doc in documents
        ]
    images = {image["name"]: image for image in kustomization.get("images", [])}
    for doc in documents:
        doc["metadata"]["namespace"] = kustomization["namespace"]
        for container in _containers(doc):
            name, _, tag = container["image"].partition(":")
            if name in images:
                image = images[name]
                container["image"] = f"{image.get('newName', name)}:{image.get('newTag', tag)}"
        yield doc


def _containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    if doc["kind"] not in ("Deployment", "StatefulSet"):
        return []
    return list(doc["spec"]["template"]["spec"]["containers"])


# -- schemas -------------------------------------------------------------------------------


def _kubernetes_version() -> str:
    from kubernetes_validate.utils import latest_version

    return str(latest_version())


def _validate_kubernetes(doc: dict[str, Any]) -> None:
    import kubernetes_validate

    kubernetes_validate.validate(doc, _kubernetes_version(), strict=True)


def _validate_keda(doc: dict[str, Any]) -> None:
    import jsonschema

    schema = json.loads((DEPLOY / "schemas" / "keda.schema.json").read_text())
    jsonschema.validate(doc, schema)


def _validate(doc: dict[str, Any]) -> None:
    if doc["kind"] in KEDA_KINDS:
        _validate_keda(doc)
    else:
        _validate_kubernetes(doc)


def test_every_base_manifest_is_listed_in_the_kustomization() -> None:
    listed = set(_kustomization(BASE)["resources"])
    on_disk = {path.name for path in BASE.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk


def test_base_manifests_validate_against_the_schemas() -> None:
    documents = _base_documents()
    kinds = sorted(doc["kind"] for doc in documents)
    assert kinds == sorted(
        ["ConfigMap", "Deployment", "HorizontalPodAutoscaler", "PodDisruptionBudget", "Secret",
         "Service", "Service", "StatefulSet", "ScaledObject", "TriggerAuthentication"]
    )  # fmt: skip
    for doc in documents:
        _validate(doc)


@pytest.mark.parametrize("overlay", sorted(p.name for p in OVERLAYS.iterdir() if p.is_dir()))
def test_overlay_output_validates_against_the_schemas(overlay: str) -> None:
    documents = list(_overlay_documents(OVERLAYS / overlay))
    for doc in documents:
        _validate(doc)
    images = {c["image"] for doc in documents for c in _containers(doc)}
    for image in _kustomization(OVERLAYS / overlay).get("images", []):
        assert f"{image['newName']}:{image['newTag']}" in images


def test_schema_validation_rejects_a_wrong_manifest() -> None:
    """The checks above can fail: an unknown field and a wrong type are caught."""
    from kubernetes_validate.utils import ValidationError

    deployment = _one("Deployment")
    deployment["spec"]["replicas"] = "two"
    with pytest.raises(ValidationError):
        _validate_kubernetes(deployment)
    scaled = _one("ScaledObject")
    scaled["spec"]["maxReplicas"] = 3  # the HPA's name, not KEDA's
    import jsonschema

    with pytest.raises(jsonschema.ValidationError):
        _validate_keda(scaled)


# -- flags, config keys and environment ----------------------------------------------------


def _subcommand_parser(name: str) -> argparse.ArgumentParser:
    parser = build_parser()
    [subparsers] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return subparsers.choices[name]  # type: ignore[no-any-return]


def _flags(args: list[str]) -> list[str]:
    return [arg.partition("=")[0] for arg in args if arg.startswith("--")]


@pytest.mark.parametrize("kind", ["Deployment", "StatefulSet"])
def test_container_flags_are_accepted_by_the_cli(kind: str) -> None:
    args = _container(kind)["args"]
    accepted = _subcommand_parser(args[0])._option_string_actions
    unknown = [flag for flag in _flags(args) if flag not in accepted]
    assert unknown == [], f"{kind}: `streamserve {args[0]}` does not accept {unknown}"


def test_model_server_args_parse_completely() -> None:
    args = build_parser().parse_args(_container("Deployment")["args"])
    assert (args.port, args.rest_api_port, args.model_name) == (8500, 8501, "imagenet")


def test_stream_config_keys_are_stream_flags() -> None:
    accepted = _subcommand_parser("stream")._option_string_actions
    keys = [key for key in _stream_toml() if key != "kafka"]
    unknown = [key for key in keys if f"--{key.replace('_', '-')}" not in accepted]
    assert unknown == [], f"stream.toml keys that are not `streamserve stream` flags: {unknown}"
    assert all(isinstance(v, str) for v in _stream_toml()["kafka"].values())


def test_stream_pod_settings_resolve_through_the_real_settings_code(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The pod's command line, its ConfigMap file and its Secret variables, given to
    ``streamserve stream --print-config``: accepted, and resolved as intended."""
    from streamserve.cli import main

    config = tmp_path / "stream.toml"
    config.write_text(_one("ConfigMap")["data"]["stream.toml"])
    container = _container("StatefulSet")
    argv = [
        {TOML_PATH: str(config), "$(POD_NAME)": "stream-processor-0"}.get(arg, arg)
        for arg in container["args"]
    ]
    for variable in container["env"]:
        if "secretKeyRef" in variable["valueFrom"]:
            monkeypatch.setenv(
                variable["name"], f"value-of-{variable['valueFrom']['secretKeyRef']['key']}"
            )
    assert main([*argv, "--print-config"]) == 0
    printed = tomllib.loads(capsys.readouterr().out)
    assert printed["instance_id"] == "stream-processor-0"
    assert printed["kafka"]["sasl.username"] == "value-of-username"
    assert printed["kafka"]["sasl.password"] == "[redacted]"  # resolved, never printed
    assert printed["metrics_port"] == container["ports"][0]["containerPort"]


def test_stream_config_is_mounted_where_the_args_point() -> None:
    container = _container("StatefulSet")
    args = container["args"]
    assert args[args.index("--config") + 1] == TOML_PATH
    [mount] = [m for m in container["volumeMounts"] if TOML_PATH.startswith(m["mountPath"] + "/")]
    volumes = _one("StatefulSet")["spec"]["template"]["spec"]["volumes"]
    [volume] = [v for v in volumes if v["name"] == mount["name"]]
    assert volume["configMap"]["name"] == _one("ConfigMap")["metadata"]["name"]


def test_instance_id_is_the_pod_name() -> None:
    container = _container("StatefulSet")
    args = container["args"]
    assert args[args.index("--instance-id") + 1] == "$(POD_NAME)"
    [pod_name] = [e for e in container["env"] if e["name"] == "POD_NAME"]
    assert pod_name["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"


def test_credentials_come_from_the_secret_as_kafka_environment_variables() -> None:
    secret = _one("Secret")
    from_secret = [e for e in _container("StatefulSet")["env"] if "secretKeyRef" in e["valueFrom"]]
    assert {e["name"] for e in from_secret} == {
        "STREAMSERVE_KAFKA_SASL_USERNAME",
        "STREAMSERVE_KAFKA_SASL_PASSWORD",
    }
    for variable in from_secret:
        ref = variable["valueFrom"]["secretKeyRef"]
        assert ref["name"] == secret["metadata"]["name"] and ref["key"] in secret["stringData"]
    toml_text = _one("ConfigMap")["data"]["stream.toml"]
    assert "sasl.password" not in toml_text and "sasl.username" not in toml_text


# -- probes and ports ----------------------------------------------------------------------


def _flag_value(args: list[str], flag: str) -> str:
    for i, arg in enumerate(args):
        if arg == flag:
            return str(args[i + 1])
        if arg.startswith(flag + "="):
            return arg.partition("=")[2]
    raise AssertionError(f"{flag} not in {args}")


def _probes(container: dict[str, Any]) -> list[dict[str, Any]]:
    names = ("startupProbe", "readinessProbe", "livenessProbe")
    return [container[name] for name in names if name in container]


def test_model_server_probes_hit_ports_the_flags_open() -> None:
    container = _container("Deployment")
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    grpc_port = int(_flag_value(container["args"], "--port"))
    rest_port = int(_flag_value(container["args"], "--rest_api_port"))
    assert ports == {"grpc": grpc_port, "http": rest_port}
    for probe in _probes(container):
        if "grpc" in probe:
            assert probe["grpc"]["port"] == grpc_port
        else:
            assert probe["httpGet"]["port"] == rest_port
    service = _one(
        "Service", [d for d in _base_documents() if d["metadata"]["name"] == "model-server"]
    )
    assert {p["targetPort"] for p in service["spec"]["ports"]} == set(ports)


def test_model_server_probes_are_served(tmp_path: Path) -> None:
    """A real server (tiny model) answers every probe: gRPC health SERVING, HTTP 200."""
    from streamserve.models.toy import build_tiny
    from streamserve.server import Server, ServerOptions

    build_tiny(tmp_path / "imagenet" / "1")
    options = ServerOptions(
        model_name="imagenet", model_base_path=tmp_path / "imagenet", host="127.0.0.1"
    )
    with Server(options) as server, grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as ch:
        for probe in _probes(_container("Deployment")):
            if "grpc" in probe:
                request = health_pb2.HealthCheckRequest(service=probe["grpc"].get("service", ""))
                reply = health_pb2_grpc.HealthStub(ch).Check(request, timeout=10)
                assert reply.status == health_pb2.HealthCheckResponse.SERVING, probe
            else:
                url = f"http://127.0.0.1:{server.rest_port}{probe['httpGet']['path']}"
                assert httpx.get(url, timeout=10).status_code == 200, probe


def test_stream_probes_hit_the_metrics_port_and_are_served() -> None:
    from streamserve.stream.health import HealthPolicy, OperationsServer, StreamHealth
    from streamserve.stream.telemetry import StreamMetrics

    container = _container("StatefulSet")
    metrics_port = _stream_toml()["metrics_port"]
    assert [p["containerPort"] for p in container["ports"]] == [metrics_port]
    health = StreamHealth(HealthPolicy(), lambda: False)
    server = OperationsServer(StreamMetrics().registry, health, 0, "127.0.0.1")
    try:
        for probe in _probes(container):
            assert probe["httpGet"]["port"] == metrics_port
            reply = httpx.get(f"http://127.0.0.1:{server.port}{probe['httpGet']['path']}")
            assert reply.status_code in (200, 503), probe  # served (503: not started yet)
        assert httpx.get(f"http://127.0.0.1:{server.port}/nope").status_code == 404
    finally:
        server.close()


# -- autoscaling ---------------------------------------------------------------------------


def test_keda_scales_the_statefulset_on_its_group_lag_within_the_partitions() -> None:
    scaled, statefulset, toml = _one("ScaledObject"), _one("StatefulSet"), _stream_toml()
    target = scaled["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("StatefulSet", statefulset["metadata"]["name"])
    partitions = int(statefulset["metadata"]["annotations"]["streamserve.io/input-partitions"])
    assert 1 <= scaled["spec"]["minReplicaCount"] <= scaled["spec"]["maxReplicaCount"] <= partitions
    [trigger] = scaled["spec"]["triggers"]
    assert trigger["type"] == "kafka"
    metadata = trigger["metadata"]
    assert metadata["consumerGroup"] == toml["group_id"]
    assert metadata["topic"] == toml["input_topic"]
    assert metadata["bootstrapServers"] == toml["bootstrap_servers"]
    auth = _one("TriggerAuthentication")
    assert trigger["authenticationRef"]["name"] == auth["metadata"]["name"]
    secret = _one("Secret")
    for ref in auth["spec"]["secretTargetRef"]:
        assert ref["name"] == secret["metadata"]["name"] and ref["key"] in secret["stringData"]


def test_hpa_scales_the_model_server_deployment() -> None:
    hpa, deployment = _one("HorizontalPodAutoscaler"), _one("Deployment")
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    pdb = _one("PodDisruptionBudget")
    assert pdb["spec"]["selector"] == deployment["spec"]["selector"]
    assert pdb["spec"]["minAvailable"] < hpa["spec"]["minReplicas"]


# -- Containerfile -------------------------------------------------------------------------


def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", text)
    lines = [line.strip() for line in joined.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "")
        for line in lines
        if line and not line.startswith("#")
    ]


def _readme_install_command() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Install", 1)[1]
    block = section.split("```bash", 1)[1].split("```", 1)[0]
    return block.strip().splitlines()[0].split("#")[0].strip()


def test_containerfile_builds_like_the_readme_and_runs_streamserve_as_non_root() -> None:
    instructions = _instructions((DEPLOY / "Containerfile").read_text())
    stages = [i for i, (op, _) in enumerate(instructions) if op == "FROM"]
    assert len(stages) >= 2, "multi-stage"
    final = instructions[stages[-1] :]
    runs = [args for op, args in instructions if op == "RUN"]
    assert any(_readme_install_command() in run for run in runs), _readme_install_command()
    users = [args for op, args in final if op == "USER"]
    assert users and users[-1] not in ("0", "root")
    [entrypoint] = [json.loads(args) for op, args in final if op == "ENTRYPOINT"]
    assert entrypoint == ["streamserve"]
    [cmd] = [json.loads(args) for op, args in final if op == "CMD"]
    assert build_parser().parse_args(cmd).command == "serve"
    assert any(op == "ARG" and args.startswith("MODELS") for op, args in final)
    assert any(op == "COPY" and "${MODELS}" in shlex.split(args) for op, args in final)
