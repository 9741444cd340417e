"""The README's Layout section names every package folder, and only folders that exist."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "src" / "streamserve"


def _layout_block() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Layout", 1)[1]
    return section.split("```", 2)[1]


def _package_folders() -> set[str]:
    return {
        f"{path.name}/"
        for path in PACKAGE.iterdir()
        if path.is_dir() and (path / "__init__.py").exists()
    }


def test_every_package_folder_has_a_line() -> None:
    named = set(re.findall(r"^  (\w+/)", _layout_block(), flags=re.MULTILINE))
    assert named == _package_folders()


def test_top_level_folders_in_the_layout_exist() -> None:
    top = re.findall(r"^([\w.]+/)", _layout_block(), flags=re.MULTILINE)
    missing = [name for name in top if not (ROOT / name).is_dir() and name != "src/streamserve/"]
    assert not missing
