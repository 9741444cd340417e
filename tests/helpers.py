"""Test-only helpers shared by the test modules (not part of the installed package).

:func:`build_image_classifier` writes a tiny ONNX image classifier with ``processing.json``
and ``labels.txt`` (needs the ``onnx`` package), so image pipelines can be tested without
the real ImageNet model; :func:`image_bytes` makes a solid-colour image.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np

IMAGE_PROCESSING = {
    "signatures": {
        "serving_default": {
            "image_input": {
                "name": "images",
                "model_input": "input",
                "resize_short": 32,
                "crop": 32,
                "mean": [127.0, 127.0, 127.0],
                "std": [128.0, 128.0, 128.0],
                "layout": "NCHW",
                "color": "RGB",
                "max_pixels": 40_000_000,
                "max_bytes": 20_000_000,
            },
            "topk_output": {
                "model_output": "logits",
                "k": 2,
                "softmax": True,
                "labels_file": "labels.txt",
                "classes_name": "classes",
                "scores_name": "scores",
            },
        },
    },
    "raw_signature_name": "tensor",
}
COLOR_LABELS = ("red", "green", "blue")


def build_image_classifier(version_dir: Path) -> Path:
    """A colour classifier: mean R, G, B of a 32x32 crop → logits for red/green/blue.

    Deterministic and meaningful: a red image is classified ``red`` with the top score.
    """
    from onnx import TensorProto, checker, helper, numpy_helper

    weight = np.eye(3, dtype=np.float32) * 10.0
    graph = helper.make_graph(
        [
            helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
            helper.make_node("Flatten", ["pooled"], ["flat"]),
            helper.make_node("MatMul", ["flat", "W"], ["logits"]),
        ],
        "colors",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 32, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])],
        initializer=[numpy_helper.from_array(weight, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    checker.check_model(model)
    version_dir.mkdir(parents=True, exist_ok=True)
    (version_dir / "model.onnx").write_bytes(model.SerializeToString())
    (version_dir / "processing.json").write_text(json.dumps(IMAGE_PROCESSING, indent=2))
    (version_dir / "labels.txt").write_text("\n".join(COLOR_LABELS) + "\n")
    return version_dir


def image_bytes(
    color: tuple[int, int, int], size: tuple[int, int] = (48, 40), image_format: str = "PNG"
) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format=image_format)
    return buffer.getvalue()
