"""Dtype tables (numpy ⇄ TF DataType ⇄ V2 datatype) and byte-level helpers shared by codecs.

Strings are numpy ``object`` arrays of ``bytes`` everywhere. bfloat16 maps to
``ml_dtypes.bfloat16`` when ml_dtypes is installed; without it, bfloat16 data decodes to
float32 (exact: bfloat16 is the top half of a float32) and cannot be encoded.
"""

from __future__ import annotations

import math
import struct
import sys
from collections.abc import Sequence

import numpy as np

from streamserve.errors import InvalidArgument, ResourceExhausted
from streamserve.protos.gen.tensorflow.core.framework import types_pb2

try:
    import ml_dtypes

    BFLOAT16: np.dtype | None = np.dtype(ml_dtypes.bfloat16)
except ImportError:  # optional: only needed to keep bfloat16 tensors as bfloat16
    BFLOAT16 = None

OBJECT = np.dtype(object)
_LITTLE_ENDIAN_HOST = sys.byteorder == "little"

_TF_TO_NUMPY: dict[types_pb2.DataType, np.dtype] = {
    types_pb2.DT_FLOAT: np.dtype(np.float32),
    types_pb2.DT_DOUBLE: np.dtype(np.float64),
    types_pb2.DT_INT32: np.dtype(np.int32),
    types_pb2.DT_UINT8: np.dtype(np.uint8),
    types_pb2.DT_INT16: np.dtype(np.int16),
    types_pb2.DT_INT8: np.dtype(np.int8),
    types_pb2.DT_STRING: OBJECT,
    types_pb2.DT_COMPLEX64: np.dtype(np.complex64),
    types_pb2.DT_INT64: np.dtype(np.int64),
    types_pb2.DT_BOOL: np.dtype(np.bool_),
    types_pb2.DT_QINT8: np.dtype(np.int8),
    types_pb2.DT_QUINT8: np.dtype(np.uint8),
    types_pb2.DT_QINT32: np.dtype(np.int32),
    types_pb2.DT_QINT16: np.dtype(np.int16),
    types_pb2.DT_QUINT16: np.dtype(np.uint16),
    types_pb2.DT_UINT16: np.dtype(np.uint16),
    types_pb2.DT_COMPLEX128: np.dtype(np.complex128),
    types_pb2.DT_HALF: np.dtype(np.float16),
    types_pb2.DT_UINT32: np.dtype(np.uint32),
    types_pb2.DT_UINT64: np.dtype(np.uint64),
    types_pb2.DT_BFLOAT16: BFLOAT16 or np.dtype(np.float32),
}

# The quantized types decode to their storage ints; encoding picks the plain int types.
_NUMPY_TO_TF: dict[np.dtype, types_pb2.DataType] = {
    dtype: tf_type
    for tf_type, dtype in _TF_TO_NUMPY.items()
    if tf_type
    not in (
        types_pb2.DT_QINT8,
        types_pb2.DT_QUINT8,
        types_pb2.DT_QINT32,
        types_pb2.DT_QINT16,
        types_pb2.DT_QUINT16,
        types_pb2.DT_BFLOAT16,
    )
}
if BFLOAT16 is not None:
    _NUMPY_TO_TF[BFLOAT16] = types_pb2.DT_BFLOAT16

_V2_TO_NUMPY: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": OBJECT,
    "BF16": BFLOAT16 or np.dtype(np.float32),
}
_NUMPY_TO_V2: dict[np.dtype, str] = {d: n for n, d in _V2_TO_NUMPY.items() if n != "BF16"}
if BFLOAT16 is not None:
    _NUMPY_TO_V2[BFLOAT16] = "BF16"


def _canonical(dtype: np.dtype | type) -> np.dtype:
    dtype = np.dtype(dtype)
    if dtype.kind in "SUO":  # bytes_, str_ and object all travel as strings
        return OBJECT
    return dtype.newbyteorder("=") if dtype.byteorder not in "=|" else dtype


def tf_to_dtype(tf_type: types_pb2.DataType) -> np.dtype:
    """numpy dtype for a TF ``DataType`` value (``object`` for DT_STRING)."""
    try:
        return _TF_TO_NUMPY[tf_type]
    except KeyError:
        raise InvalidArgument(f"unsupported tensor dtype {tf_dtype_name(tf_type)}") from None


def dtype_to_tf(dtype: np.dtype | type) -> types_pb2.DataType:
    """TF ``DataType`` value for a numpy dtype (bytes/str/object → DT_STRING)."""
    known = _NUMPY_TO_TF.get(dtype) if isinstance(dtype, np.dtype) else None
    if known is not None:  # the common case: a native-order numeric dtype
        return known
    try:
        return _NUMPY_TO_TF[_canonical(dtype)]
    except KeyError:
        raise InvalidArgument(f"numpy dtype {np.dtype(dtype)} has no TensorFlow dtype") from None


def v2_to_dtype(datatype: str) -> np.dtype:
    """numpy dtype for a V2 datatype name such as ``"FP32"`` or ``"BYTES"``."""
    try:
        return _V2_TO_NUMPY[datatype]
    except KeyError:
        known = ", ".join(_V2_TO_NUMPY)
        raise InvalidArgument(f"unsupported datatype '{datatype}' (one of {known})") from None


def dtype_to_v2(dtype: np.dtype | type) -> str:
    """V2 datatype name for a numpy dtype (bytes/str/object → ``"BYTES"``)."""
    known = _NUMPY_TO_V2.get(dtype) if isinstance(dtype, np.dtype) else None
    if known is not None:  # the common case: a native-order numeric dtype
        return known
    try:
        return _NUMPY_TO_V2[_canonical(dtype)]
    except KeyError:
        raise InvalidArgument(f"numpy dtype {np.dtype(dtype)} has no V2 datatype") from None


def tf_dtype_name(tf_type: int) -> str:
    try:
        return str(types_pb2.DataType.Name(tf_type))
    except ValueError:
        return str(tf_type)


def bfloat16_from_bits(bits: np.ndarray) -> np.ndarray:
    """uint16 bfloat16 bit patterns → bfloat16 (with ml_dtypes) or float32 values."""
    bits = bits.astype(np.uint16, copy=False)
    if BFLOAT16 is not None:
        return bits.view(BFLOAT16)
    return (bits.astype(np.uint32) << 16).view(np.float32)


def array_from_values(values: object, dtype: np.dtype, name: str) -> np.ndarray:
    """Repeated protobuf values → array; int8/16 and uint8/16 (sent as 32-bit) are range-checked."""
    if dtype.kind not in "iu" or dtype.itemsize >= 4:
        return np.array(values, dtype=dtype)
    wide = np.array(values, dtype=np.int64)
    info = np.iinfo(dtype)
    if wide.size and (wide.min() < info.min or wide.max() > info.max):
        bad = wide.min() if wide.min() < info.min else wide.max()
        raise InvalidArgument(f"tensor '{name}': value {bad} out of range for {dtype}")
    return wide.astype(dtype)


def element_count(shape: tuple[int, ...]) -> int:
    return math.prod(shape)


# numpy supports 32 (numpy 1) or 64 (numpy 2) dimensions; TensorFlow supports 254.
MAX_RANK = 32
# No array can hold more elements than this (its bytes must fit an intp, up to 16 B each).
MAX_ADDRESSABLE_ELEMENTS = np.iinfo(np.intp).max // 16


def check_shape(shape: Sequence[int], name: str) -> tuple[int, ...]:
    """The shape as a tuple; ``InvalidArgument`` for negative dimensions, more than
    :data:`MAX_RANK` dimensions, or more elements than any array can hold."""
    if len(shape) > MAX_RANK:
        raise InvalidArgument(
            f"tensor '{name}' has {len(shape)} dimensions; at most {MAX_RANK} are supported"
        )
    dims = tuple(map(int, shape))
    if dims and min(dims) < 0:
        raise InvalidArgument(f"tensor '{name}' has a negative dimension in shape {list(shape)}")
    if element_count(dims) > MAX_ADDRESSABLE_ELEMENTS:
        raise InvalidArgument(
            f"tensor '{name}': shape {list(dims)} has {element_count(dims)} elements, "
            "more than any tensor can hold"
        )
    return dims


def check_element_limit(count: int, shape: tuple[int, ...], name: str, limit: int | None) -> None:
    """``ResourceExhausted`` when a tensor would hold more than ``limit`` elements
    (checked before anything of that size is allocated)."""
    if limit is not None and count > limit:
        raise ResourceExhausted(
            f"tensor '{name}': shape {list(shape)} has {count} elements, more than the "
            f"limit of {limit} elements per request tensor (--max_request_tensor_elements)"
        )


def as_bytes(value: object, name: str) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, (bytearray, memoryview, np.bytes_)):
        return bytes(value)
    raise InvalidArgument(
        f"tensor '{name}': string elements must be bytes or str, got {type(value).__name__}"
    )


def bytes_array(values: list[bytes], shape: tuple[int, ...]) -> np.ndarray:
    """An object array of the given shape holding ``values`` (row-major)."""
    array = np.empty(len(values), dtype=OBJECT)
    array[:] = values
    return array.reshape(shape)


def pack_length_prefixed(array: np.ndarray, name: str) -> bytes:
    """BYTES elements as V2 raw data: each a 4-byte little-endian length, then the bytes."""
    parts: list[bytes] = []
    pack = struct.Struct("<I").pack
    for element in array.flat:
        data = as_bytes(element, name)
        parts.append(pack(len(data)))
        parts.append(data)
    return b"".join(parts)


def unpack_length_prefixed(buffer: bytes | memoryview, count: int, name: str) -> list[bytes]:
    view = memoryview(buffer)
    values: list[bytes] = []
    offset, end = 0, len(buffer)
    unpack = struct.Struct("<I").unpack_from
    while offset < end:
        if end - offset < 4:
            raise InvalidArgument(
                f"tensor '{name}': truncated BYTES length prefix at byte {offset}"
            )
        (length,) = unpack(view, offset)
        offset += 4
        if end - offset < length:
            raise InvalidArgument(
                f"tensor '{name}': BYTES element {len(values)} declares {length} bytes but only "
                f"{end - offset} remain"
            )
        values.append(bytes(view[offset : offset + length]))
        offset += length
    if len(values) != count:
        raise InvalidArgument(
            f"tensor '{name}': expected {count} BYTES elements for its shape, got {len(values)}"
        )
    return values


def frombuffer(
    buffer: bytes | memoryview,
    dtype: np.dtype,
    shape: tuple[int, ...],
    name: str,
    bfloat16: bool = False,
) -> np.ndarray:
    """Zero-copy, read-only view of little-endian row-major bytes.

    ``bfloat16``: the buffer holds bfloat16 values (decoded per :func:`bfloat16_from_bits`).
    """
    storage = np.dtype("<u2") if bfloat16 else little_endian(dtype)
    expected = element_count(shape) * storage.itemsize
    if len(buffer) != expected:
        raise InvalidArgument(
            f"tensor '{name}': got {len(buffer)} bytes of data, expected {expected} "
            f"for shape {list(shape)} and dtype {'bfloat16' if bfloat16 else dtype}"
        )
    array = np.frombuffer(buffer, dtype=storage)
    if bfloat16:
        array = bfloat16_from_bits(array)
    return array.reshape(shape)


def little_endian(dtype: np.dtype) -> np.dtype:
    if dtype.byteorder in "<|" or (_LITTLE_ENDIAN_HOST and dtype.byteorder == "="):
        return dtype
    return dtype.newbyteorder("<")


def to_little_endian_bytes(array: np.ndarray) -> bytes:
    """Row-major little-endian bytes (``tobytes`` is row-major whatever the layout)."""
    dtype = array.dtype
    if _LITTLE_ENDIAN_HOST and dtype.kind in "biuf" and dtype.byteorder in "=<|":
        return array.tobytes()  # the common case: nothing to convert
    if array.dtype == BFLOAT16:
        return np.ascontiguousarray(array).view(np.uint16).astype("<u2", copy=False).tobytes()
    return np.ascontiguousarray(array, dtype=little_endian(array.dtype)).tobytes()
