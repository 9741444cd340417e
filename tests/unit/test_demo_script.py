"""``scripts/demo.sh`` runs the commands of the demo it is asked for, and no others: the
transactions demo builds no ImageNet model. Every command it runs is a stub that logs."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "demo.sh"
STUBS = ("java", "mvn", "python3", "streamserve")


def _run_script(tmp_path: Path, *args: str) -> list[str]:
    """The script's commands among ``STUBS``, one line each: name and arguments."""
    bin_dir, log = tmp_path / "bin", tmp_path / "commands.log"
    bin_dir.mkdir()
    for name in STUBS:
        stub = bin_dir / name
        stub.write_text(f'#!/bin/sh\necho "{name} $*" >> "{log}"\n')
        stub.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    subprocess.run(["bash", str(SCRIPT), *args], env=env, check=True, timeout=60)
    return [line for line in log.read_text().splitlines() if not line.startswith("python3 ")]


@pytest.fixture(autouse=True)
def _needs_bash() -> None:
    if shutil.which("bash") is None:
        pytest.skip("bash is not installed")


def test_the_image_demo_builds_the_imagenet_model_first(tmp_path: Path) -> None:
    assert _run_script(tmp_path, "--rounds", "1") == [
        "streamserve kafka fetch",
        "streamserve models build imagenet --out models/imagenet",
        "streamserve demo --model-base-path models/imagenet --rounds 1",
    ]


def test_the_transactions_demo_skips_the_imagenet_build(tmp_path: Path) -> None:
    assert _run_script(tmp_path, "transactions", "--mode", "embedded") == [
        "streamserve kafka fetch --schema-registry",
        "streamserve demo transactions --mode embedded",
    ]
