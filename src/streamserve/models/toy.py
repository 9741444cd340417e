"""Small deterministic ONNX models for tests, benchmarks and examples.

Needs the ``onnx`` package (``streamserve[models]``), imported lazily.

- ``tiny``: ``x`` float32 [N, 64] → Gemm(64×64) → Relu → ``y`` float32 [N, 64].
- ``multi``: three typed inputs → three outputs, for codec parity tests:
  ``x`` float32 [N, 4] → ``y = 2x``; ``ids`` int64 [N, 2] → ``ids_out = ids + 1``;
  ``names`` string [N] → ``names_out`` (identity).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import onnx

OPSET = 17
IR_VERSION = 8  # accepted by every onnxruntime since 1.10


def _save(model: onnx.ModelProto, version_dir: Path) -> Path:
    import onnx

    version_dir.mkdir(parents=True, exist_ok=True)
    path = version_dir / "model.onnx"
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())
    return path


def build_tiny(version_dir: Path, width: int = 64, seed: int = 0) -> Path:
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    weight = (rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32)
    bias = (rng.standard_normal(width) * 0.1).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Gemm", ["x", "W", "b"], ["h"]),
            helper.make_node("Relu", ["h"], ["y"]),
        ],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", width])],
        initializer=[numpy_helper.from_array(weight, "W"), numpy_helper.from_array(bias, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    return _save(model, version_dir)


def build_multi(version_dir: Path) -> Path:
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [
            helper.make_node("Mul", ["x", "two"], ["y"]),
            helper.make_node("Add", ["ids", "one"], ["ids_out"]),
            helper.make_node("Identity", ["names"], ["names_out"]),
        ],
        "multi",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4]),
            helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", 2]),
            helper.make_tensor_value_info("names", TensorProto.STRING, ["N"]),
        ],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4]),
            helper.make_tensor_value_info("ids_out", TensorProto.INT64, ["N", 2]),
            helper.make_tensor_value_info("names_out", TensorProto.STRING, ["N"]),
        ],
        initializer=[
            numpy_helper.from_array(np.array(2.0, dtype=np.float32), "two"),
            numpy_helper.from_array(np.array(1, dtype=np.int64), "one"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    return _save(model, version_dir)


BUILDERS = {"tiny": build_tiny, "multi": build_multi}
