"""Real ``streamserve serve`` processes for integration tests.

- ``ServerProcess``: a :class:`streamserve.testing.ModelServerProcess` (started at once, on
  free ports) whose ``tensorflow`` refuses to import; ``wait_ready(model=...)`` waits for
  the readiness line, then for the model's status (never sleeps).
- ``serve_process`` (function fixture) and ``serve_process_module`` (module fixture):
  ``start(*flags) -> ServerProcess``; every process started is stopped at teardown.
- ``tfserving_server`` (module fixture): one server with the toy ``multi`` model as ``m``.

Server processes run with a ``tensorflow`` package on their path that refuses to import,
which proves the server never needs TensorFlow.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from streamserve.testing import ModelServerProcess, free_port


def no_tensorflow_path(root: Path) -> Path:
    """A directory whose ``tensorflow`` package raises ImportError when imported."""
    package = root / "no_tensorflow" / "tensorflow"
    package.mkdir(parents=True, exist_ok=True)
    (package / "__init__.py").write_text(
        "raise ImportError('streamserve serve must not import tensorflow')\n"
    )
    return package.parent


class ServerProcess(ModelServerProcess):
    """One ``streamserve serve`` subprocess on 127.0.0.1, started on construction, whose
    ``tensorflow`` refuses to import."""

    def __init__(self, flags: list[str], workdir: Path, env: dict[str, str] | None = None) -> None:
        child_env = dict(env or {})
        child_env["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(no_tensorflow_path(workdir)), os.environ.get("PYTHONPATH")])
        )
        rest_port = free_port()
        log_path = workdir / f"server-{rest_port}.log"
        super().__init__(flags, log_path, rest_port=rest_port, env=child_env)
        self.start()

    def stderr(self) -> str:
        return self.log_text()


def _serve(workdir: Path) -> Iterator[Callable[..., ServerProcess]]:
    started: list[ServerProcess] = []

    def start(*flags: str, env: dict[str, str] | None = None) -> ServerProcess:
        server = ServerProcess(list(flags), workdir, env)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def serve_process(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """``start(*flags) -> ServerProcess`` (then ``.wait_ready(model=...)``); stopped after."""
    yield from _serve(tmp_path)


@pytest.fixture(scope="module")
def serve_process_module(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[..., ServerProcess]]:
    """Like ``serve_process``, for servers shared by a module's tests."""
    yield from _serve(tmp_path_factory.mktemp("servers"))


@pytest.fixture(scope="module")
def tfserving_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """``streamserve serve --model_name=m --model_base_path=<dir with 1/model.onnx>``."""
    from streamserve.models.toy import build_multi

    root = tmp_path_factory.mktemp("tfserving")
    build_multi(root / "m" / "1")
    server = ServerProcess(["--model_name=m", f"--model_base_path={root / 'm'}"], root)
    try:
        yield server.wait_ready(model="m")
    finally:
        server.stop()
