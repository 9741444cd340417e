"""Tensor codecs: TensorProto, V2 gRPC / JSON, TF Serving REST JSON (no tensorflow needed)."""

from __future__ import annotations

import base64
import json
import math
from dataclasses import dataclass

import numpy as np
import pytest

from streamserve import tensors
from streamserve.errors import InvalidArgument, ResourceExhausted
from streamserve.protos import tfs, v2

DT = tfs.types_pb2
ALL_NUMERIC = [
    np.float16,
    np.float32,
    np.float64,
    np.int8,
    np.int16,
    np.int32,
    np.int64,
    np.uint8,
    np.uint16,
    np.uint32,
    np.uint64,
    np.bool_,
]


def sample(dtype, shape=(2, 3)) -> np.ndarray:
    dtype = np.dtype(dtype)
    if dtype.kind == "O":
        return np.array(
            [f"s{i}".encode() * i for i in range(math.prod(shape))], dtype=object
        ).reshape(shape)
    if dtype == np.bool_:
        return (np.arange(math.prod(shape)) % 2 == 0).reshape(shape)
    values = np.arange(math.prod(shape)).reshape(shape)
    if dtype.kind == "f":
        return (values * 0.5 - 1).astype(dtype)
    if dtype.kind == "c":
        return (values + 1j * values).astype(dtype)
    return values.astype(dtype)


# --- dtype tables ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [*ALL_NUMERIC, np.complex64, np.complex128, object])
def test_tf_dtype_round_trip(dtype):
    assert tensors.tf_to_dtype(tensors.dtype_to_tf(np.dtype(dtype))) == np.dtype(dtype)


@pytest.mark.parametrize("dtype", [*ALL_NUMERIC, object])
def test_v2_dtype_round_trip(dtype):
    assert tensors.v2_to_dtype(tensors.dtype_to_v2(np.dtype(dtype))) == np.dtype(dtype)


def test_dtype_names():
    assert tensors.dtype_to_tf(np.float32) == DT.DT_FLOAT
    assert tensors.dtype_to_tf(np.dtype("S5")) == DT.DT_STRING
    assert tensors.dtype_to_tf(np.dtype("U5")) == DT.DT_STRING
    assert tensors.dtype_to_tf(np.dtype(">f4")) == DT.DT_FLOAT
    assert tensors.dtype_to_v2(np.float16) == "FP16"
    assert tensors.dtype_to_v2(object) == "BYTES"
    assert tensors.v2_to_dtype("FP64") == np.float64


def test_triton_agrees_on_v2_names():
    utils = pytest.importorskip("tritonclient.utils")
    for dtype in [*ALL_NUMERIC, object]:
        assert tensors.dtype_to_v2(dtype) == utils.np_to_triton_dtype(np.dtype(dtype))


def test_unknown_dtypes_are_invalid_argument():
    with pytest.raises(InvalidArgument, match="FP128"):
        tensors.v2_to_dtype("FP128")
    with pytest.raises(InvalidArgument):
        tensors.tf_to_dtype(DT.DT_RESOURCE)
    with pytest.raises(InvalidArgument):
        tensors.dtype_to_tf(np.dtype("datetime64[s]"))


# --- TensorProto ----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [*ALL_NUMERIC, np.complex64, np.complex128, object])
@pytest.mark.parametrize("use_tensor_content", [True, False])
def test_tensor_proto_round_trip(dtype, use_tensor_content):
    array = sample(dtype)
    proto = tensors.numpy_to_tensor_proto(array, use_tensor_content=use_tensor_content)
    wire = tfs.tensor_pb2.TensorProto.FromString(proto.SerializeToString())
    decoded = tensors.tensor_proto_to_numpy(wire, "x")
    assert decoded.dtype == array.dtype
    np.testing.assert_array_equal(decoded, array)


def test_tensor_content_decodes_zero_copy_read_only():
    proto = tensors.numpy_to_tensor_proto(np.ones((4, 4), np.float32))
    decoded = tensors.tensor_proto_to_numpy(proto)
    assert not decoded.flags.owndata and not decoded.flags.writeable
    assert proto.tensor_content and not proto.float_val


def test_typed_fields_used_when_asked():
    values = np.array([1.0, 2.0], np.float32)
    proto = tensors.numpy_to_tensor_proto(values, use_tensor_content=False)
    assert list(proto.float_val) == [1.0, 2.0] and not proto.tensor_content
    assert [d.size for d in proto.tensor_shape.dim] == [2]


def test_out_fills_a_map_entry_in_place():
    response = tfs.predict_pb2.PredictResponse()
    tensors.numpy_to_tensor_proto(np.arange(3), out=response.outputs["y"])
    assert tensors.tensor_proto_to_numpy(response.outputs["y"]).tolist() == [0, 1, 2]


def test_strings_always_in_string_val_and_str_is_utf8():
    proto = tensors.numpy_to_tensor_proto(np.array(["héllo", "x"]))
    assert proto.dtype == DT.DT_STRING
    assert list(proto.string_val) == ["héllo".encode(), b"x"]


def test_half_val_holds_bit_patterns():
    halves = np.array([1.0, -2.5, 65504.0], dtype=np.float16)
    proto = tensors.numpy_to_tensor_proto(halves, use_tensor_content=False)
    assert list(proto.half_val) == halves.view(np.uint16).astype(int).tolist()
    np.testing.assert_array_equal(tensors.tensor_proto_to_numpy(proto), halves)


def test_bfloat16_half_val():
    bits = [0x3FC0, 0xC000]  # 1.5, -2.0
    proto = tfs.tensor_pb2.TensorProto(dtype=DT.DT_BFLOAT16, half_val=bits)
    proto.tensor_shape.dim.add().size = 2
    decoded = tensors.tensor_proto_to_numpy(proto)
    assert decoded.astype(np.float32).tolist() == [1.5, -2.0]
    if tensors.BFLOAT16 is not None:
        assert decoded.dtype == tensors.BFLOAT16
        again = tensors.numpy_to_tensor_proto(decoded, use_tensor_content=False)
        assert list(again.half_val) == bits
        content = tensors.numpy_to_tensor_proto(decoded)
        assert tensors.tensor_proto_to_numpy(content).astype(np.float32).tolist() == [1.5, -2.0]


def _typed(dtype: int, shape: list[int], **values) -> tfs.tensor_pb2.TensorProto:
    proto = tfs.tensor_pb2.TensorProto(dtype=dtype, **values)
    for size in shape:
        proto.tensor_shape.dim.add().size = size
    return proto


@pytest.mark.parametrize(
    ("proto", "expected"),
    [
        (_typed(DT.DT_FLOAT, [2, 2], float_val=[7.0]), np.full((2, 2), 7.0, np.float32)),
        (_typed(DT.DT_INT32, [3], int_val=[-1]), np.array([-1, -1, -1], np.int32)),
        (_typed(DT.DT_STRING, [2], string_val=[b"a"]), np.array([b"a", b"a"], object)),
        (_typed(DT.DT_BOOL, [2], bool_val=[True]), np.array([True, True])),
        (_typed(DT.DT_INT64, [], int64_val=[5]), np.array(5, np.int64)),
        (_typed(DT.DT_FLOAT, [0, 3]), np.zeros((0, 3), np.float32)),
    ],
)
def test_fill_scalar_and_empty(proto, expected):
    decoded = tensors.tensor_proto_to_numpy(proto)
    assert decoded.dtype == expected.dtype and decoded.shape == expected.shape
    np.testing.assert_array_equal(decoded, expected)


@pytest.mark.parametrize(
    ("proto", "message"),
    [
        (_typed(DT.DT_FLOAT, [3], float_val=[1.0, 2.0]), "2 values do not match"),
        (_typed(DT.DT_FLOAT, [2]), "0 values"),
        (_typed(DT.DT_STRING, [3], string_val=[b"a", b"b"]), "2 values"),
        (_typed(DT.DT_FLOAT, [2], tensor_content=b"\0" * 7), "got 7 bytes"),
        (_typed(DT.DT_FLOAT, [-1], float_val=[1.0]), "fully defined"),
        (_typed(DT.DT_STRING, [1], tensor_content=b"abc"), "string_val"),
        (_typed(DT.DT_INT8, [1], int_val=[300]), "out of range"),
        (_typed(DT.DT_RESOURCE, [1]), "DT_RESOURCE"),
        (_typed(DT.DT_INVALID, [1]), "DT_INVALID"),
        (_typed(DT.DT_FLOAT, [2**62, 2**62], float_val=[1.0]), "more than any tensor can hold"),
        (_typed(DT.DT_STRING, [2**62, 2**62], string_val=[b"a"]), "more than any tensor"),
        (_typed(DT.DT_FLOAT, [1] * 1000, float_val=[1.0]), "1000 dimensions; at most 32"),
        (_typed(DT.DT_FLOAT, [1] * 1000, tensor_content=b"\0" * 4), "1000 dimensions"),
        (_typed(DT.DT_FLOAT, [-1, -1], tensor_content=b"\0" * 4), "fully defined"),
        (_typed(DT.DT_FLOAT, [2, 2], tensor_content=b"\0" * 12), "12 bytes"),
    ],
)
def test_bad_tensor_protos_name_the_tensor(proto, message):
    with pytest.raises(InvalidArgument, match=message) as error:
        tensors.tensor_proto_to_numpy(proto, "pixels")
    assert "pixels" in error.value.message


@pytest.mark.parametrize(
    "proto",
    [
        _typed(DT.DT_FLOAT, [4194304, 64], float_val=[1.0]),
        _typed(DT.DT_STRING, [4194304, 64], string_val=[b"a"]),
        _typed(DT.DT_FLOAT, [1001], float_val=[1.0] * 1001),
        _typed(DT.DT_FLOAT, [1001], tensor_content=b"\0" * 4004),
    ],
)
def test_element_limit_is_checked_before_allocating(proto):
    with pytest.raises(ResourceExhausted, match="more than the limit of 1000 elements") as error:
        tensors.tensor_proto_to_numpy(proto, "pixels", max_elements=1000)
    assert (
        "pixels" in error.value.message and "--max_request_tensor_elements" in error.value.message
    )
    filled = tensors.tensor_proto_to_numpy(
        _typed(DT.DT_FLOAT, [10, 100], float_val=[2.0]), "x", 1000
    )
    assert filled.shape == (10, 100) and float(filled.sum()) == 2000.0


def test_unknown_rank_is_rejected():
    proto = _typed(DT.DT_FLOAT, [], float_val=[1.0])
    proto.tensor_shape.unknown_rank = True
    with pytest.raises(InvalidArgument, match="unknown rank"):
        tensors.tensor_proto_to_numpy(proto)


def test_encoding_non_bytes_objects_fails_clearly():
    with pytest.raises(InvalidArgument, match="bytes or str"):
        tensors.numpy_to_tensor_proto(np.array([1, "a"], dtype=object))


# --- V2 gRPC --------------------------------------------------------------------------------

V2_TYPES = [*ALL_NUMERIC, object]


@pytest.mark.parametrize("dtype", V2_TYPES)
@pytest.mark.parametrize("raw", [True, False])
def test_infer_tensor_round_trip(dtype, raw):
    array = sample(dtype)
    tensor, data = tensors.numpy_to_infer_output("y", array, raw=raw)
    must_be_raw = raw or dtype == np.float16
    assert (data is not None) == must_be_raw
    wire = type(tensor).FromString(tensor.SerializeToString())
    decoded = tensors.infer_input_to_numpy(wire, data)
    assert wire.datatype == tensors.dtype_to_v2(dtype) and list(wire.shape) == [2, 3]
    assert decoded.dtype == array.dtype
    np.testing.assert_array_equal(decoded, array)


def test_bytes_raw_layout_is_length_prefixed_little_endian():
    _, data = tensors.numpy_to_infer_input("w", np.array([b"ab", b""], dtype=object), raw=True)
    assert data == b"\x02\x00\x00\x00ab\x00\x00\x00\x00"


def test_bytes_raw_matches_tritonclient():
    utils = pytest.importorskip("tritonclient.utils")
    words = np.array([[b"x", b"\xff" * 300], [b"", "é".encode()]], dtype=object)
    _, ours = tensors.numpy_to_infer_input("w", words, raw=True)
    assert ours == utils.serialize_byte_tensor(words).item()
    tensor = v2.grpc_service_pb2.ModelInferRequest.InferInputTensor(
        name="w", datatype="BYTES", shape=[2, 2]
    )
    decoded = tensors.infer_input_to_numpy(tensor, utils.serialize_byte_tensor(words).item())
    assert decoded.tolist() == words.tolist()


def _input(datatype: str, shape: list[int], **contents):
    tensor = v2.grpc_service_pb2.ModelInferRequest.InferInputTensor(
        name="img", datatype=datatype, shape=shape
    )
    for field, values in contents.items():
        getattr(tensor.contents, field).extend(values)
    return tensor


@pytest.mark.parametrize(
    ("tensor", "raw", "message"),
    [
        (_input("FP32", [2, 2]), b"\0" * 12, "got 12 bytes of data, expected 16"),
        (_input("FP16", [2], fp32_contents=[1.0, 2.0]), None, "raw contents"),
        (_input("FP32", [3], fp32_contents=[1.0]), None, "expected 3 values"),
        (_input("INT32", [2], fp32_contents=[1.0, 2.0]), None, "int_contents"),
        (_input("INT8", [1], int_contents=[1000]), None, "out of range"),
        (_input("FP32", [1], fp32_contents=[1.0]), b"\0" * 4, "both"),
        (_input("BYTES", [2]), b"\x01\x00\x00\x00a", "expected 2 BYTES elements"),
        (_input("BYTES", [1]), b"\x09\x00\x00\x00a", "declares 9 bytes"),
        (_input("BYTES", [1]), b"\x01\x00", "truncated"),
        (_input("FP33", [1]), b"", "unsupported datatype 'FP33'"),
        (_input("FP32", [-1]), b"", "negative dimension"),
        (_input("FP32", [-1, -1]), b"\0" * 4, "negative dimension"),
        (_input("FP32", [1] * 1000, fp32_contents=[1.0]), None, "1000 dimensions"),
        (_input("FP32", [1] * 1000), b"\0" * 4, "1000 dimensions"),
        (_input("FP32", [2**62, 2**62]), b"\0" * 4, "more than any tensor can hold"),
    ],
)
def test_bad_infer_inputs(tensor, raw, message):
    with pytest.raises(InvalidArgument, match=message) as error:
        tensors.infer_input_to_numpy(tensor, raw)
    assert "img" in error.value.message


def test_bf16_raw():
    tensor = _input("BF16", [2])
    decoded = tensors.infer_input_to_numpy(tensor, np.array([0x3FC0, 0xC000], "<u2").tobytes())
    assert decoded.astype(np.float32).tolist() == [1.5, -2.0]


# --- V2 JSON --------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", V2_TYPES)
@pytest.mark.parametrize("binary", [False, True])
def test_v2_json_round_trip(dtype, binary):
    array = sample(dtype)
    entry, data = tensors.numpy_to_v2_json("y", array, binary=binary)
    entry = json.loads(json.dumps(entry))
    if binary:
        assert entry["parameters"]["binary_data_size"] == len(data)
        assert "data" not in entry
    decoded = tensors.v2_json_to_numpy(entry, data)
    assert decoded.dtype == array.dtype
    np.testing.assert_array_equal(decoded, array)


def test_v2_json_accepts_nested_data_and_writes_flat():
    entry = {"name": "x", "datatype": "INT64", "shape": [2, 2], "data": [[1, 2], [3, 4]]}
    assert tensors.v2_json_to_numpy(entry).tolist() == [[1, 2], [3, 4]]
    out, _ = tensors.numpy_to_v2_json("x", np.array([[1, 2], [3, 4]]), binary=False)
    assert out == {"name": "x", "datatype": "INT64", "shape": [2, 2], "data": [1, 2, 3, 4]}


def test_v2_json_non_utf8_bytes_as_b64():
    out, _ = tensors.numpy_to_v2_json("b", np.array([b"ok", b"\xff"], dtype=object), False)
    assert out["data"] == ["ok", {"b64": "/w=="}]
    assert tensors.v2_json_to_numpy(out).tolist() == [b"ok", b"\xff"]


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"name": "x", "datatype": "FP32", "shape": [3], "data": [1, 2]}, "2 data elements"),
        ({"name": "x", "datatype": "INT32", "shape": [1], "data": [1.5]}, "expected integer"),
        ({"name": "x", "datatype": "FP32", "shape": [1], "data": ["a"]}, "got string"),
        ({"name": "x", "datatype": "BOOL", "shape": [1], "data": [1]}, "expected boolean"),
        ({"name": "x", "datatype": "UINT8", "shape": [1], "data": [-1]}, "out of range"),
        ({"name": "x", "datatype": "FP32", "shape": [2], "data": [[1], [2, 3]]}, "ragged"),
        ({"name": "x", "datatype": "BYTES", "shape": [1], "data": [3]}, "expected a string"),
        ({"name": "x", "datatype": "FP32", "shape": "2", "data": [1]}, "list of integers"),
        ({"name": "x", "datatype": 5, "shape": [1], "data": [1]}, "'datatype' must be"),
        ({"name": "x", "datatype": "FP32", "shape": [1]}, "no 'data'"),
        ({"name": "x", "datatype": "FP32", "shape": [1] * 1000, "data": [1]}, "1000 dimensions"),
        ({"name": "x", "datatype": "FP32", "shape": [2**62, 2**62], "data": [1]}, "any tensor"),
    ],
)
def test_bad_v2_json(entry, message):
    with pytest.raises(InvalidArgument, match=message):
        tensors.v2_json_to_numpy(entry)


def test_v2_json_needs_a_name():
    with pytest.raises(InvalidArgument, match="name"):
        tensors.v2_json_to_numpy({"datatype": "FP32", "shape": [1], "data": [1]})


def test_split_binary_data():
    inputs = [
        {"name": "a", "parameters": {"binary_data_size": 4}},
        {"name": "b", "data": [1]},
        {"name": "c", "parameters": {"binary_data_size": 2}},
    ]
    parts = tensors.split_binary_data(inputs, b"abcdXY")
    assert [p if p is None else bytes(p) for p in parts] == [b"abcd", None, b"XY"]
    with pytest.raises(InvalidArgument, match="exceeds"):
        tensors.split_binary_data(inputs, b"abc")
    with pytest.raises(InvalidArgument, match="unexpected bytes"):
        tensors.split_binary_data(inputs, b"abcdXYZ")


def test_binary_json_matches_tritonclient_http():
    http = pytest.importorskip("tritonclient.http")
    values = np.arange(6, dtype=np.float32).reshape(2, 3)
    infer_input = http.InferInput("x", [2, 3], "FP32")
    infer_input.set_data_from_numpy(values, binary_data=True)
    entry = infer_input._get_tensor()  # what tritonclient puts in the JSON header
    decoded = tensors.v2_json_to_numpy(entry, infer_input._get_binary_data())
    np.testing.assert_array_equal(decoded, values)


# --- TF Serving REST ------------------------------------------------------------------------


@dataclass(frozen=True)
class Spec:
    dtype: np.dtype


F32 = Spec(np.dtype(np.float32))
STR = Spec(np.dtype(object))
I64 = Spec(np.dtype(np.int64))


def test_rest_instances_single_input():
    decoded = tensors.rest_instances_to_numpy([[1, 2], [3, 4]], {"x": F32})
    assert decoded["x"].dtype == np.float32 and decoded["x"].tolist() == [[1, 2], [3, 4]]


def test_rest_instances_named_inputs_and_b64():
    instances = [
        {"image": {"b64": base64.b64encode(b"\xff\xd8").decode()}, "k": 1},
        {"image": {"b64": base64.b64encode(b"png").decode()}, "k": 2},
    ]
    decoded = tensors.rest_instances_to_numpy(instances, {"image": STR, "k": I64})
    assert decoded["image"].tolist() == [b"\xff\xd8", b"png"]
    assert decoded["k"].tolist() == [1, 2]


def test_rest_instances_single_b64_value_is_not_a_named_object():
    decoded = tensors.rest_instances_to_numpy([{"b64": "YQ=="}, "b"], {"images": STR})
    assert decoded["images"].tolist() == [b"a", b"b"]


@pytest.mark.parametrize(
    ("instances", "signature", "message"),
    [
        ([], {"x": F32}, "non-empty"),
        ({"x": 1}, {"x": F32}, "non-empty JSON list"),
        ([[1, 2], [3]], {"x": F32}, "ragged"),
        ([1, 2], {"x": F32, "y": F32}, "2 inputs"),
        ([{"x": 1}, {"y": 2}], {"x": F32, "y": F32}, "same input names"),
        ([{"z": 1}], {"x": F32}, "unknown input 'z'"),
        ([{"b64": "!!"}], {"x": STR}, "invalid base64"),
        (["a"], {"x": F32}, "expected number"),
    ],
)
def test_bad_rest_instances(instances, signature, message):
    with pytest.raises(InvalidArgument, match=message):
        tensors.rest_instances_to_numpy(instances, signature)


def test_rest_columnar_inputs():
    named = tensors.rest_inputs_to_numpy({"x": [[1.5]], "s": "text"}, {"x": F32, "s": STR})
    assert named["x"].shape == (1, 1) and named["s"].tolist() == b"text"
    single = tensors.rest_inputs_to_numpy([1, 2, 3], {"x": I64})
    assert single["x"].tolist() == [1, 2, 3]
    with pytest.raises(InvalidArgument, match="unknown input"):
        tensors.rest_inputs_to_numpy({"nope": 1}, {"x": F32})


def test_rest_row_predictions():
    scores = np.array([[0.5, 0.25], [1.0, 0.0]], np.float32)
    classes = np.array([[b"cat", b"dog"], [b"\xff", b"x"]], dtype=object)
    single = tensors.numpy_to_rest_predictions({"scores": scores}, row_format=True)
    assert single == [[0.5, 0.25], [1.0, 0.0]]
    rows = tensors.numpy_to_rest_predictions({"scores": scores, "classes": classes}, True)
    assert rows[0] == {"scores": [0.5, 0.25], "classes": ["cat", "dog"]}
    assert rows[1]["classes"] == [{"b64": "/w=="}, "x"]


def test_rest_columnar_outputs_and_bytes_suffix():
    outputs = {"y": np.array([1, 2]), "thumb_bytes": np.array([b"ok"], dtype=object)}
    body = tensors.rest_predict_response(outputs, row_format=False)
    assert body == {"outputs": {"y": [1, 2], "thumb_bytes": [{"b64": "b2s="}]}}
    assert tensors.numpy_to_rest_predictions({"y": np.float32(2.5)}, row_format=False) == 2.5


def test_rest_nan_and_infinity_survive_stdlib_json():
    body = tensors.rest_predict_response({"y": np.array([np.nan, np.inf])}, row_format=True)
    assert json.dumps(body) == '{"predictions": [NaN, Infinity]}'


def test_rest_row_format_needs_a_common_batch():
    with pytest.raises(InvalidArgument, match="different batch sizes"):
        tensors.numpy_to_rest_predictions({"a": np.zeros(2), "b": np.zeros(3)}, True)
    with pytest.raises(InvalidArgument, match="scalar"):
        tensors.numpy_to_rest_predictions({"a": np.float32(1)}, True)


@pytest.mark.parametrize(
    "array",
    [
        np.arange(6, dtype=np.float32).reshape(2, 3),
        np.arange(6, dtype=">i4").reshape(3, 2),  # big-endian: converted
        np.arange(6, dtype=np.int64).reshape(2, 3).T,  # not contiguous
        np.array([b"ab", b""], dtype=object),
        np.array([True, False]),
    ],
)
def test_add_raw_output_matches_the_general_encoder(array):
    response = v2.grpc_service_pb2.ModelInferResponse()
    data = tensors.add_raw_output(response.outputs, "y", array)
    tensor, expected = tensors.numpy_to_infer_output("y", array, raw=True)
    assert response.outputs[0] == tensor and data == expected
    decoded = tensors.infer_output_to_numpy(response.outputs[0], data)
    np.testing.assert_array_equal(decoded, array)
