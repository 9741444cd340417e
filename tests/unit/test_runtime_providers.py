"""ONNX Runtime execution providers and session threads: selection, CPU fallback with one
warning, per-model ``streamserve.json`` override, and the provider in logs and metrics."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from streamserve.errors import InvalidArgument
from streamserve.models.toy import build_tiny
from streamserve.repository import ModelConfig, ModelManager, VersionPolicy
from streamserve.runtimes import providers
from streamserve.runtimes.base import LoadOptions, providers_of
from streamserve.runtimes.onnx import OnnxRuntime, model_options
from streamserve.runtimes.registry import load_servable
from streamserve.server.cli import configure, options_from_args
from streamserve.server.metrics import ServerMetrics

CUDA_FIRST = ("CUDAExecutionProvider", "CPUExecutionProvider")
PROVIDER_LOGGER = "streamserve.runtimes.providers"


@pytest.fixture(autouse=True)
def fresh_warnings() -> Iterator[None]:
    providers.forget_warnings()
    yield
    providers.forget_warnings()


@pytest.fixture
def tiny_base(tmp_path: Path) -> Path:
    for version in (1, 2):
        build_tiny(tmp_path / "tiny" / str(version), width=4)
    return tmp_path / "tiny"


def warnings_in(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_names_and_aliases_are_canonical() -> None:
    assert providers.parse_providers("cuda, CPUExecutionProvider,cuda") == CUDA_FIRST
    assert providers.parse_providers(["TensorRT", "openvino", "rocm"]) == (
        "TensorrtExecutionProvider",
        "OpenVINOExecutionProvider",
        "ROCMExecutionProvider",
    )
    with pytest.raises(InvalidArgument, match="unknown ONNX Runtime execution provider 'cudnn'"):
        providers.parse_providers("cudnn")


def test_session_providers_keep_available_ones_in_order_and_end_with_cpu() -> None:
    available = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert providers.session_providers(["TensorrtExecutionProvider", "CUDAExecutionProvider"],
                                       available) == ["CUDAExecutionProvider",
                                                      "CPUExecutionProvider"]  # fmt: skip
    assert providers.session_providers([], available) == ["CPUExecutionProvider"]


def test_cuda_on_a_cpu_machine_loads_on_cpu_with_exactly_one_warning(
    tiny_base: Path, caplog: pytest.LogCaptureFixture
) -> None:
    options = LoadOptions(execution_providers=CUDA_FIRST)
    with caplog.at_level(logging.INFO):
        servables = [load_servable(tiny_base / v, options) for v in ("1", "2")]  # two loads
    assert [providers_of(s) for s in servables] == [("CPUExecutionProvider",)] * 2
    [warning] = warnings_in(caplog)
    assert "execution provider CUDAExecutionProvider is not available" in warning
    assert "falling back to CPUExecutionProvider" in warning
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert sum("runs on CPUExecutionProvider" in m for m in infos) == 2


def test_streamserve_json_overrides_the_server_wide_options(tiny_base: Path) -> None:
    (tiny_base / "streamserve.json").write_text(
        json.dumps({"onnx": {"execution_providers": ["openvino", "cpu"], "intra_op_threads": 1,
                             "inter_op_threads": 2}})
    )  # fmt: skip
    chosen = model_options(LoadOptions(execution_providers=CUDA_FIRST), tiny_base / "1")
    assert chosen.execution_providers == ("OpenVINOExecutionProvider", "CPUExecutionProvider")
    assert (chosen.intra_op_threads, chosen.inter_op_threads) == (1, 2)
    servable = OnnxRuntime(LoadOptions()).load(tiny_base / "1")
    assert providers_of(servable) == ("CPUExecutionProvider",)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"onnx": {"execution_providers": ["nope"]}}, "unknown ONNX Runtime execution provider"),
        ({"onnx": {"intra_op_threads": -1}}, "onnx.intra_op_threads must be an integer >= 0"),
        ({"onnx": {"threads": 2}}, "unknown onnx setting"),
        ({"onnx": []}, "'onnx' must be a JSON object"),
    ],
)
def test_bad_model_settings_fail_the_load_clearly(
    tiny_base: Path, settings: dict, message: str
) -> None:
    (tiny_base / "1" / "streamserve.json").write_text(json.dumps(settings))
    with pytest.raises(InvalidArgument, match=message):
        load_servable(tiny_base / "1")


def test_serve_flags_map_tf_serving_parallelism_to_onnx_threads() -> None:
    import argparse

    parser = argparse.ArgumentParser()
    configure(parser)
    args = parser.parse_args(
        ["--model_base_path=/m", "--onnx_execution_providers=CUDAExecutionProvider,cpu",
         "--tensorflow_intra_op_parallelism=3", "--tensorflow_inter_op_parallelism=2"]
    )  # fmt: skip
    options = options_from_args(args).load_options()
    assert options.execution_providers == CUDA_FIRST
    assert (options.intra_op_threads, options.inter_op_threads) == (3, 2)


def test_metrics_name_the_provider_of_each_loaded_version(tiny_base: Path) -> None:
    config = ModelConfig("tiny", tiny_base, version_policy=VersionPolicy.all())
    options = LoadOptions(execution_providers=CUDA_FIRST)
    manager = ModelManager([config], file_system_poll_wait_seconds=0, load_options=options)
    metrics = ServerMetrics(process=False)
    metrics.follow(manager)
    with manager:
        text = metrics.render().decode()
    for version in (1, 2):
        assert (
            "streamserve_model_execution_provider_info"
            f'{{model="tiny",provider="CPUExecutionProvider",version="{version}"}} 1.0'
        ) in text
    assert "CUDAExecutionProvider" not in text
