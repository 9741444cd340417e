"""Issue 12, defect 2: repository control (load/unload/reload over the network).

Refused by default (REST 403, gRPC PERMISSION_DENIED, served models unchanged); with
``--model_control_mode=explicit`` loads are confined to ``--model_repository_root``
directories (symlinks and ``..`` cannot escape, refusals do not reveal whether a path
exists); with ``--model_control_token_file`` a bearer token is required. A model whose
``processing.json`` names a labels file outside its version directory fails to load.
Real servers (in-process), real HTTP and gRPC clients.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from streamserve.models.toy import build_multi
from streamserve.protos.tfs import model_management_pb2, model_service_pb2_grpc
from streamserve.protos.v2 import grpc_service_pb2 as v2pb
from streamserve.protos.v2 import grpc_service_pb2_grpc as v2grpc
from streamserve.server.app import Server, ServerOptions
from tests.helpers import build_image_classifier

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

TOKEN = "s3cret-token-for-tests"


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """root/m (served at start), root/n (loadable), outside/o (valid, outside the root)."""
    base = tmp_path_factory.mktemp("control")
    build_multi(base / "root" / "m" / "1")
    build_multi(base / "root" / "n" / "1")
    build_multi(base / "outside" / "o" / "1")
    (base / "root" / "escape").symlink_to(base / "outside" / "o")
    bad = build_image_classifier(base / "root" / "badlabels" / "1")
    processing = json.loads((bad / "processing.json").read_text())
    for signature in processing["signatures"].values():
        if "topk_output" in signature:
            signature["topk_output"]["labels_file"] = "/etc/passwd"
    (bad / "processing.json").write_text(json.dumps(processing))
    (base / "token").write_text(TOKEN + "\n")
    return base


def _server(repo: Path, **options: Any) -> Server:
    return Server(
        ServerOptions(
            model_name="m",
            model_base_path=repo / "root" / "m",
            host="127.0.0.1",
            file_system_poll_wait_seconds=0,
            enable_model_warmup=False,
            **options,
        )
    )


@pytest.fixture(scope="module")
def default_server(repo: Path) -> Iterator[Server]:
    with _server(repo) as server:
        yield server


@pytest.fixture(scope="module")
def explicit_server(repo: Path) -> Iterator[Server]:
    with _server(
        repo, model_control_mode="explicit", model_repository_roots=(repo / "root",)
    ) as server:
        yield server


@pytest.fixture(scope="module")
def token_server(repo: Path) -> Iterator[Server]:
    with _server(
        repo,
        model_control_mode="explicit",
        model_repository_roots=(repo / "root",),
        model_control_token_file=repo / "token",
    ) as server:
        yield server


def _url(server: Server, path: str) -> str:
    return f"http://127.0.0.1:{server.rest_port}{path}"


def _load(
    server: Server, name: str, base_path: str | None = None, **headers: str
) -> httpx.Response:
    body = {"parameters": {"base_path": base_path}} if base_path else {}
    return httpx.post(
        _url(server, f"/v2/repository/models/{name}/load"), json=body, headers=headers, timeout=60
    )


def _unload(server: Server, name: str, **headers: str) -> httpx.Response:
    return httpx.post(_url(server, f"/v2/repository/models/{name}/unload"), headers=headers)


def _ready(server: Server, name: str) -> bool:
    return httpx.get(_url(server, f"/v2/models/{name}/ready"), timeout=10).status_code == 200


def _predicts(server: Server, name: str) -> bool:
    row = {"instances": [{"x": [1, 2, 3, 4], "ids": [1, 2], "names": "a"}]}
    reply = httpx.post(_url(server, f"/v1/models/{name}:predict"), json=row, timeout=10)
    return reply.status_code == 200


def _reload_request(*entries: tuple[str, str]) -> Any:
    request = model_management_pb2.ReloadConfigRequest()
    request.config.model_config_list.SetInParent()  # an empty list means "unload everything"
    for name, base_path in entries:
        request.config.model_config_list.config.add(
            name=name, base_path=base_path, model_platform="onnx"
        )
    return request


def _grpc_code(call: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value.code(), caught.value.details()


# -- default: refused ------------------------------------------------------------------------


def test_control_is_refused_by_default_and_models_stay(default_server: Server, repo: Path) -> None:
    server = default_server
    for reply in (
        _unload(server, "m"),
        _load(server, "m"),
        _load(server, "x", "/etc"),
        _load(server, "x", str(repo / "root" / "n")),
    ):
        assert reply.status_code == 403, reply.text
        assert "--model_control_mode=explicit" in reply.json()["error"]
    assert _load(server, "x", "/proc/1").json() == _load(server, "x", "/no/such/dir").json()

    target = f"127.0.0.1:{server.grpc_port}"
    with grpc.insecure_channel(target) as channel:
        models = model_service_pb2_grpc.ModelServiceStub(channel)  # type: ignore[no-untyped-call]
        v2 = v2grpc.GRPCInferenceServiceStub(channel)  # type: ignore[no-untyped-call]
        for call in (
            lambda: models.HandleReloadConfigRequest(_reload_request(), timeout=30),
            lambda: models.HandleReloadConfigRequest(_reload_request(("m", "/etc")), timeout=30),
            lambda: v2.RepositoryModelUnload(v2pb.RepositoryModelUnloadRequest(model_name="m")),
            lambda: v2.RepositoryModelLoad(v2pb.RepositoryModelLoadRequest(model_name="m")),
        ):
            code, details = _grpc_code(call)
            assert code == grpc.StatusCode.PERMISSION_DENIED, details
            assert "--model_control_mode=explicit" in details
    assert _ready(server, "m") and _predicts(server, "m")
    index = httpx.post(_url(server, "/v2/repository/index"), timeout=10).json()
    assert [(e["name"], e["state"]) for e in index] == [("m", "READY")]


# -- explicit: confined to the roots ---------------------------------------------------------


def test_explicit_mode_loads_inside_the_root_only(explicit_server: Server, repo: Path) -> None:
    server = explicit_server
    reply = _load(server, "n", str(repo / "root" / "n"))
    assert reply.status_code == 200, reply.text
    assert _ready(server, "n") and _predicts(server, "n")

    refused = {}
    for source in (
        str(repo / "outside" / "o"),  # a real model, outside
        str(repo / "outside" / "nothing-here"),  # missing, outside
        str(repo / "root" / ".." / "outside" / "o"),  # .. escape
        str(repo / "root" / "escape"),  # symlink escape
        "/etc",
        "/proc/1",
    ):
        reply = _load(server, "o", source)
        assert reply.status_code == 403, (source, reply.text)
        refused[source] = reply.json()["error"].replace(source, "PATH")
    assert len(set(refused.values())) == 1, refused  # existence is not revealed
    assert "--model_repository_root" in next(iter(refused.values()))
    assert not _ready(server, "o")

    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        models = model_service_pb2_grpc.ModelServiceStub(channel)  # type: ignore[no-untyped-call]
        outside = _reload_request(
            ("m", str(repo / "root" / "m")), ("o", str(repo / "outside" / "o"))
        )
        code, details = _grpc_code(lambda: models.HandleReloadConfigRequest(outside, timeout=30))
        assert code == grpc.StatusCode.PERMISSION_DENIED, details
        v2 = v2grpc.GRPCInferenceServiceStub(channel)  # type: ignore[no-untyped-call]
        request = v2pb.RepositoryModelLoadRequest(model_name="o")
        request.parameters["base_path"].string_param = "/etc"
        code, details = _grpc_code(lambda: v2.RepositoryModelLoad(request))
        assert code == grpc.StatusCode.PERMISSION_DENIED, details
    assert _ready(server, "m") and _predicts(server, "m") and _ready(server, "n")

    assert _unload(server, "n").status_code == 200
    assert not _ready(server, "n") and _ready(server, "m")


def test_labels_file_outside_the_version_dir_fails_the_load(
    explicit_server: Server, repo: Path
) -> None:
    reply = _load(explicit_server, "badlabels", str(repo / "root" / "badlabels"))
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert "labels_file '/etc/passwd' must be inside the model's version directory" in error
    assert "root:" not in error
    assert not _ready(explicit_server, "badlabels")


# -- explicit with a token -------------------------------------------------------------------


def test_token_is_required(token_server: Server, repo: Path) -> None:
    server = token_server
    inside = str(repo / "root" / "n")
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
        assert _load(server, "n", inside, **headers).status_code == 401, headers
        assert _unload(server, "m", **headers).status_code == 401, headers
    assert _ready(server, "m") and not _ready(server, "n")
    good = {"Authorization": f"Bearer {TOKEN}"}
    assert _load(server, "n", inside, **good).status_code == 200
    assert _ready(server, "n")

    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        models = model_service_pb2_grpc.ModelServiceStub(channel)  # type: ignore[no-untyped-call]
        request = _reload_request(("m", str(repo / "root" / "m")))
        for metadata in ((), (("authorization", "Bearer nope"),)):
            code, _ = _grpc_code(
                lambda metadata=metadata: models.HandleReloadConfigRequest(
                    request, timeout=30, metadata=metadata
                )
            )
            assert code == grpc.StatusCode.UNAUTHENTICATED
        assert _ready(server, "n")  # nothing changed
        models.HandleReloadConfigRequest(
            request, timeout=30, metadata=(("authorization", f"Bearer {TOKEN}"),)
        )
    assert _ready(server, "m") and not _ready(server, "n")


def test_failed_loads_answer_with_the_load_errors_code(explicit_server: Server, repo: Path) -> None:
    empty = repo / "root" / "empty"
    empty.mkdir(exist_ok=True)
    reply = _load(explicit_server, "empty", str(empty))
    assert reply.status_code == 404, reply.text  # NOT_FOUND: no version, not 500/UNKNOWN
    corrupt = repo / "root" / "corrupt" / "1"
    corrupt.mkdir(parents=True, exist_ok=True)
    (corrupt / "model.onnx").write_bytes(b"\x08\x07not an onnx model")
    with grpc.insecure_channel(f"127.0.0.1:{explicit_server.grpc_port}") as channel:
        v2 = v2grpc.GRPCInferenceServiceStub(channel)  # type: ignore[no-untyped-call]
        request = v2pb.RepositoryModelLoadRequest(model_name="corrupt")
        request.parameters["base_path"].string_param = str(corrupt.parent)
        code, details = _grpc_code(lambda: v2.RepositoryModelLoad(request, timeout=60))
    assert code == grpc.StatusCode.DATA_LOSS, details  # the ONNX loader's code, not UNKNOWN
    assert not _ready(explicit_server, "empty") and not _ready(explicit_server, "corrupt")
