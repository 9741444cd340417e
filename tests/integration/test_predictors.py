"""Every remote predictor against a real ``streamserve serve`` process, checked against the
in-process EmbeddedPredictor over the same model repository.

The module's server serves, from one model config file:
- ``multi`` (x FP32 [N,4] → 2x; ids INT64 [N,2] → ids+1; names STRING [N] → echo),
- ``tiny`` versions 1 and 2 (labels stable=1, canary=2; latest = 2).
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest

from streamserve.errors import DeadlineExceeded, InvalidArgument, NotFound, Unavailable
from streamserve.models.toy import build_multi, build_tiny
from streamserve.predictors.balancer import BalancedPredictor
from streamserve.predictors.base import Prediction, Predictor
from streamserve.predictors.embedded import EmbeddedPredictor
from streamserve.predictors.factory import PredictorSpec, create_members, create_predictor
from streamserve.processes import free_port, restartable_port
from streamserve.repository import ModelManager, parse_model_config_file

if TYPE_CHECKING:
    from .conftest import ServerProcess

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


CASES = [
    pytest.param("tfserving", "grpc", id="tfserving-grpc"),
    pytest.param("tfserving", "http", id="tfserving-rest"),
    pytest.param("v2", "grpc", id="v2-grpc"),
    pytest.param("v2", "http", id="v2-rest"),
]

MULTI_INPUTS = {
    "x": np.arange(12, dtype=np.float32).reshape(3, 4) / 7,
    "ids": np.array([[1, -2], [3, 2**40], [0, 9]], dtype=np.int64),
    "names": np.array([b"plain", "caf\u00e9 \u4e2d".encode(), b""], dtype=object),
}


def run(coroutine_factory: Callable[[], object]) -> object:
    return asyncio.run(coroutine_factory())  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("repo")
    build_multi(root / "multi" / "1")
    build_tiny(root / "tiny" / "1", seed=1)
    build_tiny(root / "tiny" / "2", seed=2)
    (root / "models.config").write_text(
        "model_config_list {\n"
        f"  config {{ name: 'multi' base_path: '{root / 'multi'}' model_platform: 'onnx' }}\n"
        f"  config {{ name: 'tiny' base_path: '{root / 'tiny'}' model_platform: 'onnx'\n"
        "    model_version_policy { specific { versions: 1 versions: 2 } }\n"
        "    version_labels { key: 'stable' value: 1 }\n"
        "    version_labels { key: 'canary' value: 2 } }\n"
        "}\n"
    )
    return root


@pytest.fixture(scope="module")
def server(serve_process_module: Callable[..., ServerProcess], repository: Path) -> ServerProcess:
    config = repository / "models.config"
    return serve_process_module(f"--model_config_file={config}").wait_ready(model="tiny")


@pytest.fixture(scope="module")
def manager(repository: Path) -> Iterator[ModelManager]:
    configs = parse_model_config_file(repository / "models.config")
    with ModelManager(configs) as started:
        started.start()
        yield started


def target_of(server: ServerProcess, transport: str) -> str:
    return f"grpc://{server.grpc_target}" if transport == "grpc" else server.rest_url


def remote(server: ServerProcess, protocol: str, transport: str, **spec: object) -> Predictor:
    spec.setdefault("model_name", "multi")
    return create_predictor(
        PredictorSpec([target_of(server, transport)], protocol=protocol, **spec)  # type: ignore[arg-type]
    )


async def predict_once(
    predictor: Predictor, inputs: Mapping[str, np.ndarray], signature: str | None = None
) -> Prediction:
    try:
        return await predictor.predict(inputs, signature)
    finally:
        await predictor.close()


def assert_same(remote_result: Prediction, local: Prediction) -> None:
    assert (remote_result.model_name, remote_result.model_version) == (
        local.model_name,
        local.model_version,
    )
    assert remote_result.outputs.keys() == local.outputs.keys()
    for name, expected in local.outputs.items():
        got = remote_result.outputs[name]
        assert got.dtype == expected.dtype and got.shape == expected.shape, name
        if expected.dtype == object:
            assert [bytes(v) for v in got.flat] == [bytes(v) for v in expected.flat], name
        else:
            np.testing.assert_array_equal(got, expected, err_msg=name)


# ------------------------------------------------------------------ correctness


@pytest.mark.parametrize(("protocol", "transport"), CASES)
def test_parity_with_embedded(
    server: ServerProcess, manager: ModelManager, protocol: str, transport: str
) -> None:
    async def go() -> tuple[Prediction, Prediction]:
        got = await predict_once(remote(server, protocol, transport), MULTI_INPUTS)
        expected = await predict_once(EmbeddedPredictor(manager, "multi"), MULTI_INPUTS)
        return got, expected

    got, expected = run(go)  # type: ignore[misc]
    assert_same(got, expected)
    np.testing.assert_array_equal(got.outputs["y"], MULTI_INPUTS["x"] * 2)


@pytest.mark.parametrize(("protocol", "transport"), CASES)
def test_versions_and_labels(
    server: ServerProcess, manager: ModelManager, protocol: str, transport: str
) -> None:
    x = {"x": np.random.default_rng(3).standard_normal((4, 64)).astype(np.float32)}
    choices: list[tuple[int | None, str | None, int]] = [
        (None, None, 2),
        (1, None, 1),
        (2, None, 2),
    ]
    if protocol == "tfserving":
        choices += [(None, "stable", 1), (None, "canary", 2)]

    async def go() -> None:
        for version, label, answering in choices:
            spec = {"model_name": "tiny", "model_version": version, "model_label": label}
            got = await predict_once(remote(server, protocol, transport, **spec), x)
            local = EmbeddedPredictor(manager, "tiny", version=version, label=label)
            expected = await predict_once(local, x)
            assert expected.model_version == answering
            assert_same(got, expected)

    run(go)


@pytest.mark.parametrize(("protocol", "transport"), CASES)
def test_concurrent_calls_share_one_channel(
    server: ServerProcess, protocol: str, transport: str
) -> None:
    async def go() -> None:
        predictor = remote(server, protocol, transport)
        batches = [{**MULTI_INPUTS, "x": np.full((3, 4), i, dtype=np.float32)} for i in range(64)]
        try:
            results = await asyncio.gather(*(predictor.predict(b) for b in batches))
        finally:
            await predictor.close()
        for i, result in enumerate(results):
            np.testing.assert_array_equal(result.outputs["y"], np.full((3, 4), 2 * i))

    run(go)


@pytest.mark.parametrize("transport", ["grpc", "http"])
def test_per_call_channel_baseline(server: ServerProcess, transport: str) -> None:
    async def go() -> None:
        predictor = remote(server, "tfserving", transport, per_call_channel=True)
        try:
            for _ in range(5):
                result = await predictor.predict(MULTI_INPUTS)
                np.testing.assert_array_equal(result.outputs["ids_out"], MULTI_INPUTS["ids"] + 1)
        finally:
            await predictor.close()

    run(go)


# ------------------------------------------------------------------ errors


@pytest.mark.parametrize(("protocol", "transport"), CASES)
def test_rejections_are_typed(server: ServerProcess, protocol: str, transport: str) -> None:
    async def go() -> None:
        wrong_shape = {**MULTI_INPUTS, "x": np.zeros((3, 5), dtype=np.float32)}
        with pytest.raises(InvalidArgument) as rejected:
            await predict_once(remote(server, protocol, transport), wrong_shape)
        assert target_of(server, transport) in rejected.value.message
        with pytest.raises(NotFound):
            await predict_once(remote(server, protocol, transport, model_name="nope"), MULTI_INPUTS)
        with pytest.raises(NotFound):
            await predict_once(
                remote(server, protocol, transport, model_name="tiny", model_version=9),
                {"x": np.zeros((1, 64), dtype=np.float32)},
            )

    run(go)


@pytest.mark.parametrize(("protocol", "transport"), CASES)
def test_nobody_listening_is_unavailable(protocol: str, transport: str) -> None:
    port = free_port()
    target = f"grpc://127.0.0.1:{port}" if transport == "grpc" else f"http://127.0.0.1:{port}"
    predictor = create_predictor(PredictorSpec([target], "multi", protocol=protocol, timeout_s=5.0))
    with pytest.raises(Unavailable):
        run(lambda: predict_once(predictor, MULTI_INPUTS))


@pytest.mark.parametrize(("protocol", "transport"), CASES)
def test_silent_server_times_out(protocol: str, transport: str) -> None:
    """A socket that accepts connections and never answers: the call ends as transient."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        port = silent.getsockname()[1]
        scheme = "grpc" if transport == "grpc" else "http"
        predictor = create_predictor(
            PredictorSpec(
                [f"{scheme}://127.0.0.1:{port}"], "multi", protocol=protocol, timeout_s=0.5
            )
        )
        with pytest.raises((DeadlineExceeded, Unavailable)):
            run(lambda: predict_once(predictor, MULTI_INPUTS))


@pytest.mark.parametrize("transport", ["grpc", "http"])
def test_server_down_then_back(
    serve_process: Callable[..., ServerProcess], repository: Path, transport: str
) -> None:
    """One long-lived predictor: works, fails transiently while the server is gone, and
    works again once a new server listens on the same ports (channel reconnects)."""
    config = f"--model_config_file={repository / 'models.config'}"
    grpc_port, rest_port = restartable_port(), restartable_port()  # restarted in place
    ports = (f"--port={grpc_port}", f"--rest_api_port={rest_port}")
    target = (
        f"grpc://127.0.0.1:{grpc_port}" if transport == "grpc" else f"http://127.0.0.1:{rest_port}"
    )

    async def go() -> None:
        predictor = create_predictor(PredictorSpec([target], "multi", timeout_s=2.0))
        try:
            first = serve_process(config, *ports).wait_ready()
            await predictor.predict(MULTI_INPUTS)
            first.stop()
            with pytest.raises((Unavailable, DeadlineExceeded)):
                await predictor.predict(MULTI_INPUTS)
            serve_process(config, *ports).wait_ready()
            deadline = time.monotonic() + 30
            while True:
                try:
                    result = await predictor.predict(MULTI_INPUTS)
                    break
                except (Unavailable, DeadlineExceeded):
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.1)
            np.testing.assert_array_equal(result.outputs["y"], MULTI_INPUTS["x"] * 2)
        finally:
            await predictor.close()

    run(go)


# ------------------------------------------------------------------ balancing


class Counting:
    """Counts the calls that reach one balancer member."""

    def __init__(self, inner: Predictor) -> None:
        self.inner = inner
        self.target = str(getattr(inner, "target", ""))
        self.mode = inner.mode
        self.calls = 0

    async def predict(
        self, inputs: Mapping[str, np.ndarray], signature_name: str | None = None
    ) -> Prediction:
        self.calls += 1
        return await self.inner.predict(inputs, signature_name)

    async def close(self) -> None:
        await self.inner.close()


def test_balancer_spreads_over_servers_and_transports(
    server: ServerProcess, serve_process_module: Callable[..., ServerProcess], repository: Path
) -> None:
    other = serve_process_module(f"--model_config_file={repository / 'models.config'}")
    other.wait_ready(model="tiny")
    targets = [f"grpc://{server.grpc_target}", other.rest_url, f"grpc://{other.grpc_target}"]

    async def go() -> list[Counting]:
        created = create_predictor(PredictorSpec(targets, "multi"))
        assert isinstance(created, BalancedPredictor) and len(created.members) == 3
        await created.close()
        members = [Counting(m) for m in create_members(PredictorSpec(targets, "multi"))]
        balancer = BalancedPredictor(members)
        gate = asyncio.Semaphore(6)

        async def one(i: int) -> None:
            async with gate:
                inputs = {**MULTI_INPUTS, "x": np.full((3, 4), i, dtype=np.float32)}
                result = await balancer.predict(inputs)
                np.testing.assert_array_equal(result.outputs["y"], inputs["x"] * 2)

        try:
            await asyncio.gather(*(one(i) for i in range(120)))
            assert sum(balancer.outstanding().values()) == 0
        finally:
            await balancer.close()
        return members

    members = run(go)
    calls = [m.calls for m in members]  # type: ignore[attr-defined]
    assert sum(calls) == 120 and min(calls) > 0, calls
