"""Regenerate ``streamserve/protos/gen`` from the ``.proto`` files beside this module.

Run ``python -m streamserve.protos.regenerate`` (needs grpcio-tools). The raw protoc output is
post-processed so that:

* messages are added to the private pool ``streamserve.protos._pool.POOL`` instead of
  protobuf's default pool (no clash with tensorflow / tensorflow-serving-api / tritonclient);
* imports point into ``streamserve.protos.gen``;
* protoc's exact-runtime-version check and grpc's generated-version check are dropped, so the
  code runs on any protobuf runtime that has ``google.protobuf.internal.builder`` and on the
  grpcio versions pyproject allows (tests verify the installed ones).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from importlib import resources
from pathlib import Path

PROTO_ROOT = Path(__file__).resolve().parent
GEN_DIR = PROTO_ROOT / "gen"
GEN_PACKAGE = "streamserve.protos.gen"
# Top-level proto packages (directories) we own; imports of these are rewritten.
OWN_ROOTS = ("tensorflow", "tensorflow_serving", "inference")

_NOTE = "# Post-processed by streamserve.protos.regenerate: private descriptor pool.\n"
_RUNTIME_CHECK = re.compile(
    r"from google\.protobuf import runtime_version as _runtime_version\n"
    r"|_runtime_version\.ValidateProtobufRuntimeVersion\(\n(?:    .*\n)*?\)\n"
)
_GRPC_VERSION_CHECK = re.compile(r"GRPC_GENERATED_VERSION = .*?\n\n\nclass ", re.DOTALL)
_OWN_IMPORT = re.compile(rf"^(from|import) ({'|'.join(OWN_ROOTS)})([.\w]*)", re.MULTILINE)


def proto_files() -> list[Path]:
    return sorted(p.relative_to(PROTO_ROOT) for p in PROTO_ROOT.rglob("*.proto"))


def run_protoc(out_dir: Path) -> None:
    # A child process: protoc's C++ runtime must not share a process with tensorflow's.
    well_known = resources.files("grpc_tools") / "_proto"
    args = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *(str(PROTO_ROOT / p) for p in proto_files()),
    ]
    subprocess.run(args, check=True)


def _rewrite_imports(text: str) -> str:
    return _OWN_IMPORT.sub(lambda m: f"{m[1]} {GEN_PACKAGE}.{m[2]}{m[3]}", text)


def postprocess_pb2(text: str, module: str) -> str:
    text = _RUNTIME_CHECK.sub("", text)
    text = text.replace(
        "_descriptor_pool.Default().AddSerializedFile(",
        "_streamserve_pool.POOL.AddSerializedFile(",
    )
    text = text.replace(
        "from google.protobuf.internal import builder as _builder\n",
        "from google.protobuf.internal import builder as _builder\n"
        "from streamserve.protos import _pool as _streamserve_pool\n",
    )
    text = text.replace(f"'{module}'", f"'{GEN_PACKAGE}.{module}'")
    if "_streamserve_pool.POOL" not in text:
        raise RuntimeError(f"unexpected protoc output for {module}: no AddSerializedFile call")
    return _NOTE + _rewrite_imports(text)


def postprocess_grpc(text: str) -> str:
    text = _GRPC_VERSION_CHECK.sub("class ", text, count=1)
    return _NOTE + _rewrite_imports(text)


def _module_name(relative: Path) -> str:
    return ".".join(relative.with_suffix("").parts)


def install(raw_dir: Path, gen_dir: Path) -> list[Path]:
    written = []
    for source in sorted(raw_dir.rglob("*.py*")):
        relative = source.relative_to(raw_dir)
        text = source.read_text()
        if source.name.endswith("_pb2_grpc.py"):
            if "class " not in text:  # protoc writes an empty grpc module per message file
                continue
            text = postprocess_grpc(text)
        elif source.suffix == ".py":
            text = postprocess_pb2(text, _module_name(relative))
        else:  # .pyi
            text = _rewrite_imports(text)
        target = gen_dir / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        written.append(target)
    for package_dir in [gen_dir, *(p for p in gen_dir.rglob("*") if p.is_dir())]:
        if package_dir.name != "__pycache__":
            (package_dir / "__init__.py").touch()
    return written


def regenerate(gen_dir: Path = GEN_DIR) -> list[Path]:
    with tempfile.TemporaryDirectory() as tmp:
        raw_dir = Path(tmp)
        run_protoc(raw_dir)
        if gen_dir.exists():
            shutil.rmtree(gen_dir)
        gen_dir.mkdir(parents=True)
        (gen_dir / "__init__.py").write_text('"""Generated code; see regenerate.py."""\n')
        return install(raw_dir, gen_dir)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=GEN_DIR, help="output directory")
    args = parser.parse_args(argv)
    written = regenerate(args.out)
    print(f"wrote {len(written)} files under {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
