"""processing.json: image decoding, torchvision-style resize/crop, top-k, limits, errors."""

from __future__ import annotations

import io
import json
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image, ImageOps

from streamserve.errors import FailedPrecondition, InvalidArgument
from streamserve.runtimes import DEFAULT_SIGNATURE, load_servable
from streamserve.runtimes.images import BadImages, ImageSpec, preprocess_batch
from streamserve.runtimes.processing import ProcessedServable, TopKOutput, top_k

OBJ = np.dtype(object)
RESIZE, CROP, CLASSES = 10, 8, 10
MEAN, STD = [127.0, 120.0, 110.0], [128.0, 64.0, 32.0]
LABELS = [f"class-{i}" for i in range(CLASSES - 1)] + ["ünïcode"]


def processing_doc(**image_overrides: Any) -> dict[str, Any]:
    image = {
        "name": "images",
        "model_input": "input",
        "resize_short": RESIZE,
        "crop": CROP,
        "mean": MEAN,
        "std": STD,
        "layout": "NCHW",
        "color": "RGB",
        "max_pixels": 40_000_000,
        "max_bytes": 20_000_000,
    }
    image.update(image_overrides)
    topk = {
        "model_output": "logits",
        "k": 3,
        "softmax": True,
        "labels_file": "labels.txt",
        "classes_name": "classes",
        "scores_name": "scores",
    }
    return {
        "signatures": {
            "serving_default": {"image_input": image, "topk_output": topk},
            "predict_images": {"same_as": "serving_default"},
        },
        "raw_signature_name": "tensor",
    }


def build_classifier(version_dir: Path, doc: dict[str, Any] | None = None) -> Path:
    """``input`` f32 [N,3,8,8] → ``logits`` [N,10] (linear) and ``features`` [N,192]."""
    from onnx import TensorProto, helper, numpy_helper

    weight = np.random.default_rng(3).standard_normal((3 * CROP * CROP, CLASSES)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Flatten", ["input"], ["features"], axis=1),
            helper.make_node("MatMul", ["features", "W"], ["logits"]),
        ],
        "classifier",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, CROP, CROP])],
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", CLASSES]),
            helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", 3 * CROP * CROP]),
        ],
        initializer=[numpy_helper.from_array(weight, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    version_dir.mkdir(parents=True, exist_ok=True)
    (version_dir / "model.onnx").write_bytes(model.SerializeToString())
    (version_dir / "labels.txt").write_text("\n".join(LABELS) + "\n", encoding="utf-8")
    (version_dir / "processing.json").write_text(json.dumps(doc or processing_doc()))
    return version_dir


@pytest.fixture
def classifier_dir(tmp_path: Path) -> Path:
    return build_classifier(tmp_path / "clf" / "1")


def random_image(width: int, height: int, mode: str = "RGB", seed: int = 0) -> Image.Image:
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, channels), dtype=np.uint8)
    return Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels, mode)


def encode(image: Image.Image, fmt: str = "PNG", **params: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares width×height pixels but carries no pixel data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def reference_input(data: bytes) -> np.ndarray:
    """torchvision Resize(10) + CenterCrop(8) semantics on PIL, written out longhand."""
    image = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
    width, height = image.size
    if width <= height:
        size = (RESIZE, int(RESIZE * height / width))
    else:
        size = (int(RESIZE * width / height), RESIZE)
    image = image.resize(size, Image.BILINEAR)
    left, top = round((size[0] - CROP) / 2.0), round((size[1] - CROP) / 2.0)
    image = image.crop((left, top, left + CROP, top + CROP))
    values = (np.asarray(image, dtype=np.float32) - np.float32(MEAN)) / np.float32(STD)
    return values.transpose(2, 0, 1)[np.newaxis]


def images_array(*items: object) -> np.ndarray:
    array = np.empty(len(items), dtype=object)
    array[:] = items
    return array


SPEC = ImageSpec(resize_short=RESIZE, crop=CROP, mean=tuple(MEAN), std=tuple(STD))


@pytest.mark.parametrize(("width", "height"), [(30, 20), (20, 30), (17, 17), (10, 10), (33, 11)])
@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_preprocess_matches_torchvision_semantics_bit_for_bit(
    width: int, height: int, fmt: str
) -> None:
    data = encode(random_image(width, height), fmt)
    batch = preprocess_batch("images", images_array(data), SPEC)
    assert batch.dtype == np.float32 and batch.shape == (1, 3, CROP, CROP)
    assert np.array_equal(batch, reference_input(data))


def test_exif_orientation_is_applied() -> None:
    upright = random_image(30, 20)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: viewers rotate 90° clockwise
    stored = upright.transpose(Image.Transpose.ROTATE_90)
    tagged = encode(stored, "PNG", exif=exif)
    got = preprocess_batch("images", images_array(tagged, encode(upright)), SPEC)
    assert np.array_equal(got[0], got[1])


@pytest.mark.parametrize("mode", ["L", "RGBA"])
def test_other_colour_modes_become_rgb(mode: str) -> None:
    data = encode(random_image(12, 12, mode))
    assert np.array_equal(
        preprocess_batch("images", images_array(data), SPEC), reference_input(data)
    )


def test_nhwc_and_bgr_layouts() -> None:
    data = encode(random_image(20, 14))
    nchw = preprocess_batch("images", images_array(data), SPEC)
    nhwc = preprocess_batch(
        "images", images_array(data), ImageSpec(RESIZE, CROP, tuple(MEAN), tuple(STD), "NHWC")
    )
    assert np.array_equal(nhwc[0], nchw[0].transpose(1, 2, 0))
    bgr_spec = ImageSpec(RESIZE, CROP, tuple(MEAN[::-1]), tuple(STD[::-1]), "NCHW", "BGR")
    bgr = preprocess_batch("images", images_array(data), bgr_spec)
    assert np.array_equal(bgr[0], nchw[0][::-1])


def test_pool_decoding_matches_sequential() -> None:
    items = images_array(*(encode(random_image(15 + i, 25 - i, seed=i), "JPEG") for i in range(6)))
    with ThreadPoolExecutor(3) as pool:
        parallel = preprocess_batch("images", items, SPEC, pool)
    assert np.array_equal(parallel, preprocess_batch("images", items, SPEC))


def test_bad_elements_are_named_by_index() -> None:
    good = encode(random_image(12, 12))
    items = images_array(good, b"not an image", good, "text", encode(random_image(12, 12))[:60])
    with pytest.raises(BadImages) as caught:
        preprocess_batch("images", items, SPEC)
    error = caught.value
    assert isinstance(error, InvalidArgument)
    assert sorted(error.bad_elements) == [1, 3, 4]
    assert "element 1: not a decodable image" in error.message
    assert "element 3: expected encoded image bytes, got str" in error.message
    assert "element 4: not a decodable image" in error.message
    assert error.message.startswith("input 'images': ")


def test_fifty_megapixel_header_is_refused_before_decoding() -> None:
    bomb = png_header_only(10_000, 5_000)  # 50 MP declared, no pixel data at all
    with pytest.raises(BadImages) as caught:
        preprocess_batch("images", images_array(encode(random_image(9, 9)), bomb), SPEC)
    assert caught.value.bad_elements == {
        1: "image is 10000x5000 = 50000000 pixels, more than max_pixels=40000000"
    }


def test_too_many_bytes_is_refused() -> None:
    data = encode(random_image(40, 40))
    spec = ImageSpec(RESIZE, CROP, tuple(MEAN), tuple(STD), max_bytes=len(data) - 1)
    with pytest.raises(
        BadImages, match=rf"element 0: image is {len(data)} bytes, more than max_bytes"
    ):
        preprocess_batch("images", images_array(data), spec)


def test_signatures_expose_images_and_raw_tensor(classifier_dir: Path) -> None:
    servable = load_servable(classifier_dir)
    assert isinstance(servable, ProcessedServable)
    assert set(servable.signatures) == {"serving_default", "predict_images", "tensor"}
    sig = servable.signatures[DEFAULT_SIGNATURE]
    assert {n: (s.dtype, s.shape) for n, s in sig.inputs.items()} == {"images": (OBJ, (None,))}
    assert {n: (s.dtype, s.shape) for n, s in sig.outputs.items()} == {
        "features": (np.dtype(np.float32), (None, 192)),
        "classes": (OBJ, (None, 3)),
        "scores": (np.dtype(np.float32), (None, 3)),
    }
    raw = servable.signatures["tensor"]
    assert raw.name == "tensor" and list(raw.inputs) == ["input"]
    assert list(raw.outputs) == ["logits", "features"]


def test_end_to_end_matches_raw_onnxruntime(classifier_dir: Path) -> None:
    servable = load_servable(classifier_dir)
    datas = [encode(random_image(20 + 3 * i, 14 + i, seed=i), "JPEG") for i in range(4)]
    out = servable.predict({"images": images_array(*datas)}, "predict_images")
    assert list(out) == ["features", "classes", "scores"]
    session = ort.InferenceSession(
        str(classifier_dir / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    reference = np.concatenate([reference_input(d) for d in datas])
    (logits,) = session.run(["logits"], {"input": reference})
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    order = np.argsort(-probs, axis=1, kind="stable")[:, :3]
    labels = np.array([label.encode() for label in LABELS], dtype=object)
    assert out["classes"].dtype == OBJ and out["classes"].shape == (4, 3)
    assert np.array_equal(out["classes"], labels[order])
    assert out["scores"].dtype == np.float32
    np.testing.assert_allclose(out["scores"], np.take_along_axis(probs, order, 1), rtol=1e-6)
    assert np.all(np.diff(out["scores"], axis=1) <= 0)


def test_raw_signature_passes_through(classifier_dir: Path) -> None:
    servable = load_servable(classifier_dir)
    x = np.random.default_rng(5).standard_normal((2, 3, CROP, CROP)).astype(np.float32)
    out = servable.predict({"input": x}, "tensor", ["logits"])
    session = ort.InferenceSession(
        str(classifier_dir / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    assert np.array_equal(out["logits"], session.run(["logits"], {"input": x})[0])
    with pytest.raises(
        InvalidArgument, match=r"input 'input': expected float32\[\?,3,8,8\].*'tensor'"
    ):
        servable.predict({"input": x[:, :2]}, "tensor")


def test_output_filter_and_request_errors(classifier_dir: Path) -> None:
    servable = load_servable(classifier_dir)
    images = images_array(encode(random_image(12, 12)))
    assert list(servable.predict({"images": images}, output_filter=["scores"])) == ["scores"]
    with pytest.raises(InvalidArgument, match="output 'logits' not found"):
        servable.predict({"images": images}, output_filter=["logits"])
    with pytest.raises(
        InvalidArgument, match=r"input 'images': expected string\[\?\], got string\[1,1\]"
    ):
        servable.predict({"images": images.reshape(1, 1)})
    with pytest.raises(InvalidArgument, match="missing input 'images'"):
        servable.predict({})
    with pytest.raises(InvalidArgument, match=r"unexpected input 'input'.*expected inputs: images"):
        servable.predict({"input": np.zeros((1, 3, CROP, CROP), np.float32)})
    with pytest.raises(BadImages, match="element 0: not a decodable image"):
        servable.predict({"images": images_array(b"\x89PNG garbage")})


def test_top_k_softmax_off_and_stable_ties() -> None:
    labels = np.array([b"a", b"b", b"c", b"d"], dtype=object)
    spec = TopKOutput(model_output="logits", k=3, softmax=False, labels=labels)
    classes, scores = top_k(np.array([[1.0, 3.0, 3.0, 0.5]], np.float32), spec)
    assert classes.tolist() == [[b"b", b"c", b"a"]]
    assert scores.tolist() == [[3.0, 3.0, 1.0]]


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (
            lambda d: d["signatures"]["serving_default"]["image_input"].update(model_input="nope"),
            "model has no input 'nope'",
        ),
        (
            lambda d: d["signatures"]["serving_default"]["image_input"].update(crop=12),
            "crop must not exceed resize_short",
        ),
        (
            lambda d: d["signatures"]["serving_default"]["image_input"].update(
                crop=6, resize_short=6
            ),
            "does not take NCHW images of",
        ),
        (
            lambda d: d["signatures"]["serving_default"]["topk_output"].update(k=11),
            "k=11 exceeds the 10 labels",
        ),
        (
            lambda d: d["signatures"]["serving_default"]["topk_output"].update(
                labels_file="none.txt"
            ),
            "cannot read labels file",
        ),
        (
            lambda d: d["signatures"]["serving_default"]["topk_output"].update(
                labels_file="/etc/passwd"
            ),
            "labels_file '/etc/passwd' must be inside the model's version directory",
        ),
        (
            lambda d: d["signatures"]["serving_default"]["topk_output"].update(
                labels_file="../../labels.txt"
            ),
            "labels_file '../../labels.txt' must be inside the model's version directory",
        ),
        (
            lambda d: d["signatures"]["serving_default"]["image_input"].update(mean=[1.0]),
            "'mean' must be a list of 3 numbers",
        ),
        (
            lambda d: d["signatures"].update(predict_images={"same_as": "ghost"}),
            "same_as 'ghost' is not a defined signature",
        ),
        (lambda d: d.update(raw_signature_name="serving_default"), "clashes"),
    ],
)
def test_bad_processing_json_names_the_file(tmp_path: Path, mutate: Any, message: str) -> None:
    doc = processing_doc()
    mutate(doc)
    version_dir = build_classifier(tmp_path / "1", doc)
    with pytest.raises(InvalidArgument) as caught:
        load_servable(version_dir)
    assert "processing.json" in caught.value.message
    assert message in caught.value.message


def test_labels_file_symlinked_out_of_the_version_dir_fails_the_load(tmp_path: Path) -> None:
    version_dir = build_classifier(tmp_path / "1")
    (tmp_path / "outside.txt").write_text("\n".join(f"l{i}" for i in range(10)))
    (version_dir / "labels.txt").unlink()
    (version_dir / "labels.txt").symlink_to(tmp_path / "outside.txt")
    with pytest.raises(InvalidArgument, match="must be inside the model's version directory"):
        load_servable(version_dir)


def test_unparsable_processing_json(tmp_path: Path) -> None:
    version_dir = build_classifier(tmp_path / "1")
    (version_dir / "processing.json").write_text("{not json")
    with pytest.raises(InvalidArgument, match=r"processing\.json: cannot read processing config"):
        load_servable(version_dir)


def test_close_releases_pool_and_inner(classifier_dir: Path) -> None:
    servable = load_servable(classifier_dir)
    images = images_array(*(encode(random_image(12, 12, seed=i)) for i in range(3)))
    servable.predict({"images": images})
    servable.close()
    with pytest.raises(FailedPrecondition, match="closed"):
        servable.predict({"input": np.zeros((1, 3, CROP, CROP), np.float32)}, "tensor")
    with pytest.raises(FailedPrecondition, match="closed"):
        servable.predict({"images": images})


def test_empty_batch_and_concurrent_calls(classifier_dir: Path) -> None:
    servable = load_servable(classifier_dir)
    empty = servable.predict({"images": images_array()})
    assert empty["classes"].shape == (0, 3) and empty["scores"].shape == (0, 3)
    batches = [
        images_array(*(encode(random_image(12 + i, 16, seed=i + j)) for j in range(3)))
        for i in range(8)
    ]
    expected = [servable.predict({"images": b})["scores"] for b in batches]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda b: servable.predict({"images": b})["scores"], batches))
    assert all(np.array_equal(a, b) for a, b in zip(expected, got, strict=True))
