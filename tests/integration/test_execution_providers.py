"""``--onnx_execution_providers CUDAExecutionProvider,CPUExecutionProvider`` on a machine
without a GPU: a real ``streamserve serve`` loads both versions on the CPU, logs ONE warning
naming CUDA, and its logs and Prometheus metrics name the provider in use."""

from __future__ import annotations

import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from streamserve.models.toy import build_tiny

if TYPE_CHECKING:
    from .conftest import ServerProcess

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def test_cuda_requested_on_cpu_falls_back_with_one_warning(
    tmp_path: Path, serve_process: Callable[..., ServerProcess]
) -> None:
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this machine has CUDA: nothing falls back")
    base = tmp_path / "tiny"
    for version in (1, 2):
        build_tiny(base / str(version), width=4)
    config = tmp_path / "models.config"
    config.write_text(
        f'model_config_list {{ config {{ name: "tiny" base_path: "{base}" '
        "model_version_policy { all {} } } }"
    )
    server = serve_process(
        f"--model_config_file={config}",
        "--onnx_execution_providers=CUDAExecutionProvider,CPUExecutionProvider",
        "--tensorflow_intra_op_parallelism=1",
        "--tensorflow_inter_op_parallelism=1",
    ).wait_ready(model="tiny")
    with urllib.request.urlopen(f"{server.rest_url}/metrics", timeout=30) as response:
        metrics = response.read().decode()
    log = server.log_text()
    warnings = [line for line in log.splitlines() if "WARNING" in line and "CUDA" in line]
    assert len(warnings) == 1, log
    assert "CUDAExecutionProvider is not available" in warnings[0]
    assert log.count("runs on CPUExecutionProvider") == 2
    for version in (1, 2):
        assert (
            "streamserve_model_execution_provider_info"
            f'{{model="tiny",provider="CPUExecutionProvider",version="{version}"}} 1.0'
        ) in metrics
    assert "has no effect" not in log  # the parallelism flags are no longer ignored
