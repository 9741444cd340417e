"""numpy ⇄ KServe V2 tensors: gRPC ``InferInputTensor``/``InferOutputTensor`` and JSON.

Raw data (gRPC ``raw_*_contents``, JSON binary extension) is little-endian row-major; BYTES
elements are each a 4-byte little-endian length then the bytes. FP16 and BF16 have no typed
contents field, so they always travel raw. Input and output tensors share one layout, so
every decoder here works for both directions (server and client).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from streamserve.errors import InvalidArgument
from streamserve.protos.gen.inference import grpc_service_pb2
from streamserve.tensors._dtypes import (
    MAX_RANK,
    OBJECT,
    array_from_values,
    as_bytes,
    bytes_array,
    check_shape,
    dtype_to_v2,
    element_count,
    frombuffer,
    little_endian,
    pack_length_prefixed,
    to_little_endian_bytes,
    unpack_length_prefixed,
    v2_to_dtype,
)
from streamserve.tensors._json import array_to_json, json_to_array

InferInputTensor = grpc_service_pb2.ModelInferRequest.InferInputTensor
InferOutputTensor = grpc_service_pb2.ModelInferResponse.InferOutputTensor
InferTensor = InferInputTensor | InferOutputTensor

_CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
BINARY_DATA_SIZE = "binary_data_size"


# --- gRPC ---------------------------------------------------------------------------------


def infer_input_to_numpy(tensor: InferTensor, raw: bytes | memoryview | None = None) -> np.ndarray:
    """Decode one gRPC tensor; ``raw`` is its ``raw_input_contents`` entry, if used."""
    if raw is not None:
        array = _plain_raw(tensor, raw)
        if array is not None:
            return array
    name = tensor.name
    dtype = _dtype(tensor.datatype, name)
    shape = check_shape(tensor.shape, name)
    if raw is not None:
        if tensor.HasField("contents") and tensor.contents.ByteSize():
            raise InvalidArgument(f"tensor '{name}': data given in both contents and raw contents")
        return decode_raw(raw, tensor.datatype, dtype, shape, name)
    field = _CONTENTS_FIELD.get(tensor.datatype)
    if field is None:
        raise InvalidArgument(
            f"tensor '{name}': {tensor.datatype} data must be sent as raw contents"
        )
    values = getattr(tensor.contents, field)
    count = element_count(shape)
    if len(values) != count:
        raise InvalidArgument(
            f"tensor '{name}': expected {count} values in contents.{field} for shape "
            f"{list(shape)}, got {len(values)}"
        )
    if dtype == OBJECT:
        return bytes_array(list(values), shape)
    return array_from_values(values, dtype, name).reshape(shape)


infer_output_to_numpy = infer_input_to_numpy

# little-endian storage of the datatypes whose raw bytes are plain numbers
_RAW_STORAGE = {
    datatype: little_endian(v2_to_dtype(datatype))
    for datatype in (*_CONTENTS_FIELD, "FP16")
    if datatype != "BYTES"
}


# numpy dtypes whose tobytes() already is the raw layout (native order on a little-endian host)
_PLAIN_DATATYPES = {
    dtype: datatype
    for datatype, dtype in _RAW_STORAGE.items()
    if sys.byteorder == "little" and dtype.isnative
}


def add_raw_output(tensors: Any, name: str, array: np.ndarray) -> bytes:
    """Append an output tensor (``response.outputs``) and return its raw contents."""
    datatype = _PLAIN_DATATYPES.get(array.dtype)
    if datatype is None:  # strings, bfloat16, big-endian: the general encoder
        data = fill_infer_output(tensors.add(), name, array, raw=True)
        assert data is not None  # raw=True always gives bytes
        return data
    tensors.add(name=name, datatype=datatype, shape=array.shape)
    return array.tobytes()


def _plain_raw(tensor: InferTensor, raw: bytes | memoryview) -> np.ndarray | None:
    """The common case on its own: numbers in raw contents that fit the shape exactly;
    ``None`` for anything else (the full decoder then explains what is wrong)."""
    storage = _RAW_STORAGE.get(tensor.datatype)
    if storage is None:
        return None
    dims = tensor.shape[:]  # a list: the quickest copy out of a repeated field
    if len(dims) > MAX_RANK or (dims and min(dims) < 0):
        return None
    if math.prod(dims) * storage.itemsize != len(raw) or tensor.HasField("contents"):
        return None
    return np.frombuffer(raw, storage).reshape(dims)


def numpy_to_infer_output(
    name: str, array: np.ndarray, raw: bool
) -> tuple[InferOutputTensor, bytes | None]:
    """Encode one output; returns the raw bytes for ``raw_output_contents`` when raw is used.

    FP16/BF16 are always raw. A response must not mix raw and typed outputs, so servers
    should pass ``raw=True`` for every output when any output needs it (Triton always does).
    """
    tensor = InferOutputTensor()
    return tensor, _fill(tensor, name, np.asarray(array), raw)


def fill_infer_output(
    tensor: InferOutputTensor, name: str, array: np.ndarray, raw: bool
) -> bytes | None:
    """Like :func:`numpy_to_infer_output`, into a tensor already in its response
    (``response.outputs.add()``: no copy of the message)."""
    return _fill(tensor, name, np.asarray(array), raw)


def numpy_to_infer_input(
    name: str, array: np.ndarray, raw: bool
) -> tuple[InferInputTensor, bytes | None]:
    """Client side twin of :func:`numpy_to_infer_output`."""
    tensor = InferInputTensor()
    return tensor, _fill(tensor, name, np.asarray(array), raw)


def _fill(tensor: InferTensor, name: str, array: np.ndarray, raw: bool) -> bytes | None:
    datatype = dtype_to_v2(array.dtype)
    tensor.name = name
    tensor.datatype = datatype
    tensor.shape.extend(array.shape)
    field = _CONTENTS_FIELD.get(datatype)
    if raw or field is None:
        return encode_raw(array, datatype, name)
    contents = getattr(tensor.contents, field)
    if datatype == "BYTES":
        contents.extend([as_bytes(v, name) for v in array.flat])
    else:
        contents.extend(array.reshape(-1).tolist())
    return None


# --- raw bytes ----------------------------------------------------------------------------


def decode_raw(
    buffer: bytes | memoryview, datatype: str, dtype: np.dtype, shape: tuple[int, ...], name: str
) -> np.ndarray:
    if datatype == "BYTES":
        return bytes_array(unpack_length_prefixed(buffer, element_count(shape), name), shape)
    return frombuffer(buffer, dtype, shape, name, bfloat16=datatype == "BF16")


def encode_raw(array: np.ndarray, datatype: str, name: str) -> bytes:
    if datatype == "BYTES":
        return pack_length_prefixed(array, name)
    return to_little_endian_bytes(array)


# --- JSON ---------------------------------------------------------------------------------


def v2_json_to_numpy(
    tensor: Mapping[str, Any], binary: bytes | memoryview | None = None
) -> np.ndarray:
    """Decode one V2 JSON tensor ``{name, datatype, shape, data}``.

    ``binary``: its slice of the binary-extension body (see :func:`split_binary_data`); then
    ``data`` is ignored.
    """
    name = tensor.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidArgument("every tensor needs a non-empty string 'name'")
    datatype = tensor.get("datatype")
    if not isinstance(datatype, str):
        raise InvalidArgument(f"tensor '{name}': 'datatype' must be a string")
    dtype = _dtype(datatype, name)
    raw_shape = tensor.get("shape")
    if not isinstance(raw_shape, list) or not all(isinstance(d, int) for d in raw_shape):
        raise InvalidArgument(f"tensor '{name}': 'shape' must be a list of integers")
    shape = check_shape(raw_shape, name)
    if binary is not None:
        return decode_raw(binary, datatype, dtype, shape, name)
    if "data" not in tensor:
        raise InvalidArgument(f"tensor '{name}': no 'data' and no binary_data_size parameter")
    array = json_to_array(tensor["data"], dtype, name)
    if array.size != element_count(shape):
        raise InvalidArgument(
            f"tensor '{name}': {array.size} data elements do not match shape {list(shape)}"
        )
    return array.reshape(shape)


def numpy_to_v2_json(
    name: str, array: np.ndarray, binary: bool
) -> tuple[dict[str, Any], bytes | None]:
    """Encode one tensor as V2 JSON; with ``binary`` the data is returned as bytes instead.

    BYTES elements that are not UTF-8 are written as ``{"b64": ...}`` (JSON has no bytes).
    """
    array = np.asarray(array)
    datatype = dtype_to_v2(array.dtype)
    entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(array.shape)}
    if binary:
        data = encode_raw(array, datatype, name)
        entry["parameters"] = {BINARY_DATA_SIZE: len(data)}
        return entry, data
    entry["data"] = array_to_json(array.reshape(-1), name)
    return entry, None


def split_binary_data(
    tensors: Sequence[Mapping[str, Any]], body: bytes | memoryview
) -> list[memoryview | None]:
    """Slice (zero-copy) the binary-extension body among tensors, in order, by their
    ``parameters.binary_data_size``; ``None`` for tensors whose data is in JSON."""
    body = memoryview(body)
    parts: list[memoryview | None] = []
    offset = 0
    for tensor in tensors:
        size = (tensor.get("parameters") or {}).get(BINARY_DATA_SIZE)
        if size is None:
            parts.append(None)
            continue
        if not isinstance(size, int) or size < 0 or offset + size > len(body):
            raise InvalidArgument(
                f"tensor '{tensor.get('name')}': binary_data_size {size!r} exceeds the "
                f"{len(body) - offset} bytes left in the request body"
            )
        parts.append(body[offset : offset + size])
        offset += size
    if offset != len(body):
        raise InvalidArgument(f"{len(body) - offset} unexpected bytes after the binary tensors")
    return parts


def _dtype(datatype: str, name: str) -> np.dtype:
    try:
        return v2_to_dtype(datatype)
    except InvalidArgument as error:
        raise InvalidArgument(f"tensor '{name}': {error.message}") from None


__all__ = [
    "decode_raw",
    "encode_raw",
    "fill_infer_output",
    "infer_input_to_numpy",
    "infer_output_to_numpy",
    "numpy_to_infer_input",
    "numpy_to_infer_output",
    "numpy_to_v2_json",
    "split_binary_data",
    "v2_json_to_numpy",
]
