from __future__ import annotations

import asyncio
import base64
import io
import json

import numpy as np
import pytest

from streamserve.stream.codecs import (
    CallableCodec,
    DecodedRecord,
    ImageCodec,
    InputRecord,
    TensorJsonCodec,
    classic_format,
)
from streamserve.stream.errors import RecordError


def record(value: bytes | None, key: bytes | None = b"k") -> InputRecord:
    return InputRecord("in", 2, 41, key, value)


def decode(codec, value: bytes | None) -> DecodedRecord:
    return asyncio.run(codec.decode(record(value)))


def png(size: tuple[int, int] = (8, 6), mode: str = "RGB") -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new(mode, size).save(buffer, format="PNG")
    return buffer.getvalue()


# --------------------------------------------------------------------------- tensors


def test_tensor_json_decodes_columnar_inputs_with_inferred_dtypes() -> None:
    decoded = decode(
        TensorJsonCodec(),
        json.dumps(
            {
                "id": "r1",
                "inputs": {"x": [[0.5, 1.5]], "ids": [[1, 2]], "names": ["a"]},
            }
        ).encode(),
    )
    assert decoded.id == "r1" and decoded.rows == 1 and decoded.source is None
    assert decoded.inputs["x"].dtype == np.float32
    assert decoded.inputs["ids"].dtype == np.int64
    assert decoded.inputs["names"].dtype == object and decoded.inputs["names"][0] == b"a"


def test_tensor_json_uses_declared_dtypes_and_position_as_default_id() -> None:
    decoded = decode(TensorJsonCodec({"x": "float32"}), b'{"inputs": {"x": [[1, 2], [3, 4]]}}')
    assert decoded.inputs["x"].dtype == np.float32 and decoded.rows == 2
    assert decoded.id == "in[2]@41"


@pytest.mark.parametrize(
    "value, words",
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "JSON object"),
        (None, "no value"),
        (b'{"id": 1}', "'inputs'"),
        (b'{"inputs": {"x": [[1, 2], [3]]}}', "rectangular"),
        (b'{"inputs": {"x": [[1.0]], "y": [[1.0], [2.0]]}}', "disagree"),
        (b'{"inputs": {"x": 3.0}}', "batch dimension"),
        (b'{"id": {"a": 1}, "inputs": {"x": [[1.0]]}}', "'id'"),
    ],
)
def test_tensor_json_rejects_bad_records(value: bytes | None, words: str) -> None:
    with pytest.raises(RecordError) as caught:
        decode(TensorJsonCodec(), value)
    assert caught.value.stage == "decode" and words in caught.value.reason


def test_tensor_json_encodes_outputs_model_latency_and_mode() -> None:
    decoded = DecodedRecord(7, None, {"x": np.zeros((1, 2), np.float32)})
    value = TensorJsonCodec().encode(
        decoded,
        {"y": np.array([[0.25, 1.5]], np.float32), "s": np.array([b"ok"], object)},
        "tiny",
        3,
        1.23456,
        "embedded",
    )
    assert json.loads(value) == {
        "id": 7,
        "model": {"name": "tiny", "version": 3},
        "outputs": {"y": [[0.25, 1.5]], "s": ["ok"]},
        "latency_ms": 1.235,
        "mode": "embedded",
    }


# --------------------------------------------------------------------------- images


class FakeFetcher:
    def __init__(self, data: bytes) -> None:
        self.data, self.sources = data, []

    async def fetch(self, source: str) -> bytes:
        self.sources.append(source)
        if "missing" in source:
            raise RecordError("fetch", f"file not found: {source!r}")
        return self.data


@pytest.mark.parametrize(
    "value, source",
    [
        (b"images/cat.jpg\n", "images/cat.jpg"),
        (b"file:///data/cat.jpg", "file:///data/cat.jpg"),
        (b"https://example.com/cat.jpg", "https://example.com/cat.jpg"),
        (b'{"id": "c1", "url": "https://example.com/cat.jpg"}', "https://example.com/cat.jpg"),
        (b'{"id": "c1", "path": "cat.jpg"}', "cat.jpg"),
    ],
)
def test_image_codec_fetches_references(value: bytes, source: str) -> None:
    fetcher = FakeFetcher(png())
    decoded = decode(ImageCodec(fetcher), value)
    assert fetcher.sources == [source] and decoded.source == source
    assert decoded.inputs["images"].dtype == object and decoded.inputs["images"][0] == png()


def test_image_codec_accepts_raw_and_base64_images_without_fetching() -> None:
    fetcher = FakeFetcher(b"")
    raw = decode(ImageCodec(fetcher), png())
    assert raw.source == "bytes" and raw.inputs["images"][0] == png()
    b64 = decode(
        ImageCodec(fetcher), json.dumps({"id": 9, "b64": base64.b64encode(png()).decode()}).encode()
    )
    assert b64.id == 9 and b64.source == "b64" and fetcher.sources == []


@pytest.mark.parametrize(
    "value, stage, words",
    [
        (bytes(range(256)), "decode", "neither an image"),
        (b'{"id": 1}', "decode", "exactly one of"),
        (b'{"b64": "***"}', "decode", "base64"),
        (b"missing.png", "fetch", "not found"),
        (b"", "decode", "no value"),
    ],
)
def test_image_codec_errors_name_their_stage(value: bytes, stage: str, words: str) -> None:
    with pytest.raises(RecordError) as caught:
        decode(ImageCodec(FakeFetcher(png())), value)
    assert caught.value.stage == stage and words in caught.value.reason


def test_inline_images_get_the_pixel_limit() -> None:
    with pytest.raises(RecordError) as caught:
        decode(ImageCodec(FakeFetcher(b""), max_pixels=100), png((20, 20)))
    assert "pixels" in caught.value.reason


def test_image_codec_encodes_json_and_classic() -> None:
    decoded = DecodedRecord("c1", "cat.jpg", {})
    rows = {
        "classes": np.array([[b"tabby", b"tiger cat"]], object),
        "scores": np.array([[0.75, 0.125]], np.float32),
    }
    codec = ImageCodec(FakeFetcher(b""))
    document = json.loads(codec.encode(decoded, rows, "net", 1, 2.0, "remote"))
    assert document == {
        "id": "c1",
        "source": "cat.jpg",
        "model": {"name": "net", "version": 1},
        "predictions": [{"label": "tabby", "score": 0.75}, {"label": "tiger cat", "score": 0.125}],
        "latency_ms": 2.0,
        "mode": "remote",
    }
    classic = ImageCodec(FakeFetcher(b""), output_format="classic").encode(
        decoded, rows, "net", 1, 2.0, "remote"
    )
    assert classic == b"[tabby=0.75, tiger cat=0.125]"
    assert classic_format([]) == "[]"


def test_image_codec_names_a_missing_output() -> None:
    with pytest.raises(RecordError) as caught:
        ImageCodec(FakeFetcher(b"")).encode(
            DecodedRecord(1, "x", {}), {"logits": np.zeros((1, 3))}, "net", 1, 1.0, "embedded"
        )
    assert caught.value.stage == "encode" and "classes" in caught.value.reason


def test_callable_codec_delegates() -> None:
    async def my_decode(rec: InputRecord) -> DecodedRecord:
        return DecodedRecord(rec.offset, None, {"x": np.ones((1, 1), np.float32)})

    codec = CallableCodec(my_decode, lambda d, rows, *_: str(rows["y"].sum()).encode())
    decoded = asyncio.run(codec.decode(record(b"")))
    assert decoded.id == 41
    assert codec.encode(decoded, {"y": np.ones(3)}, "m", 1, 0.0, "embedded") == b"3.0"
