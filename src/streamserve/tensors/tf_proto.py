"""numpy ⇄ TF Serving ``TensorProto``.

Decoding prefers ``tensor_content`` (a zero-copy, read-only ``np.frombuffer`` view); the typed
``*_val`` fields are the fallback, where a single value with a larger shape means "fill".
Encoding writes ``tensor_content`` for numeric tensors (what TF Serving itself sends) unless
``use_tensor_content=False``; strings always go to ``string_val``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from streamserve.errors import InvalidArgument
from streamserve.protos.gen.tensorflow.core.framework import (
    tensor_pb2,
    tensor_shape_pb2,
    types_pb2,
)
from streamserve.tensors._dtypes import (
    BFLOAT16,
    MAX_RANK,
    OBJECT,
    array_from_values,
    as_bytes,
    bfloat16_from_bits,
    bytes_array,
    check_element_limit,
    check_shape,
    dtype_to_tf,
    element_count,
    frombuffer,
    little_endian,
    tf_dtype_name,
    tf_to_dtype,
    to_little_endian_bytes,
)

TensorProto = tensor_pb2.TensorProto

# Which repeated field carries the values of each dtype.
_VALUE_FIELD: dict[int, str] = {
    types_pb2.DT_FLOAT: "float_val",
    types_pb2.DT_DOUBLE: "double_val",
    types_pb2.DT_INT32: "int_val",
    types_pb2.DT_UINT8: "int_val",
    types_pb2.DT_INT16: "int_val",
    types_pb2.DT_INT8: "int_val",
    types_pb2.DT_UINT16: "int_val",
    types_pb2.DT_QINT8: "int_val",
    types_pb2.DT_QUINT8: "int_val",
    types_pb2.DT_QINT16: "int_val",
    types_pb2.DT_QUINT16: "int_val",
    types_pb2.DT_QINT32: "int_val",
    types_pb2.DT_INT64: "int64_val",
    types_pb2.DT_BOOL: "bool_val",
    types_pb2.DT_STRING: "string_val",
    types_pb2.DT_UINT32: "uint32_val",
    types_pb2.DT_UINT64: "uint64_val",
    types_pb2.DT_HALF: "half_val",
    types_pb2.DT_BFLOAT16: "half_val",
    types_pb2.DT_COMPLEX64: "scomplex_val",
    types_pb2.DT_COMPLEX128: "dcomplex_val",
}
_HALF_BITS = (types_pb2.DT_HALF, types_pb2.DT_BFLOAT16)
# little-endian storage of the dtypes whose ``tensor_content`` is plain numbers
_CONTENT_STORAGE: dict[int, np.dtype] = {
    tf_type: little_endian(tf_to_dtype(tf_type))
    for tf_type in (
        types_pb2.DT_FLOAT, types_pb2.DT_DOUBLE, types_pb2.DT_HALF, types_pb2.DT_BOOL,
        types_pb2.DT_INT8, types_pb2.DT_INT16, types_pb2.DT_INT32, types_pb2.DT_INT64,
        types_pb2.DT_UINT8, types_pb2.DT_UINT16, types_pb2.DT_UINT32, types_pb2.DT_UINT64,
    )
}  # fmt: skip
_COMPLEX: dict[int, np.dtype] = {
    types_pb2.DT_COMPLEX64: np.dtype(np.float32),
    types_pb2.DT_COMPLEX128: np.dtype(np.float64),
}


def tensor_proto_to_numpy(
    proto: TensorProto, name: str = "tensor", max_elements: int | None = None
) -> np.ndarray:
    """Decode a TensorProto; raises ``InvalidArgument`` naming ``name`` on bad data.

    ``max_elements`` bounds the decoded tensor (``ResourceExhausted`` above it, checked
    before allocating): one value with a large shape means "fill", so a tiny request could
    otherwise expand to any size. Servers pass their limit; ``None`` means no limit.
    """
    array = _plain_content(proto, max_elements)
    if array is not None:
        return array
    if proto.dtype not in _VALUE_FIELD:
        raise InvalidArgument(f"tensor '{name}': unsupported dtype {tf_dtype_name(proto.dtype)}")
    dtype = tf_to_dtype(proto.dtype)
    shape = _shape_of(proto, name)
    check_element_limit(element_count(shape), shape, name, max_elements)
    if proto.tensor_content:
        if dtype is OBJECT:
            raise InvalidArgument(f"tensor '{name}': DT_STRING data must be in string_val")
        bfloat16 = proto.dtype == types_pb2.DT_BFLOAT16
        return frombuffer(proto.tensor_content, dtype, shape, name, bfloat16=bfloat16)
    values = getattr(proto, _VALUE_FIELD[proto.dtype])
    count = element_count(shape)
    if dtype == OBJECT:
        _check_count(len(values), count, name)
        items = list(values)
        return bytes_array(items * count if len(items) == 1 else items, shape)
    flat = _typed_values(proto.dtype, values, dtype, name)
    _check_count(len(flat), count, name)
    if len(flat) == count:
        return flat.reshape(shape)
    return np.full(shape, flat[0], dtype=flat.dtype)


def numpy_to_tensor_proto(
    array: np.ndarray | Sequence[object],
    use_tensor_content: bool = True,
    out: TensorProto | None = None,
    name: str = "tensor",
) -> TensorProto:
    """Encode an array; ``out`` (e.g. ``response.outputs[name]``) is filled in place if given."""
    array = np.asarray(array)
    proto = out if out is not None else TensorProto()
    proto.Clear()
    proto.dtype = dtype_to_tf(array.dtype)
    proto.tensor_shape.CopyFrom(_shape_proto(array.shape))
    if proto.dtype == types_pb2.DT_STRING:
        proto.string_val.extend([as_bytes(v, name) for v in array.flat])
    elif use_tensor_content:
        proto.tensor_content = to_little_endian_bytes(array)
    else:
        _write_typed_values(proto, array)
    return proto


_SHAPE_PROTOS: dict[tuple[int, ...], tensor_shape_pb2.TensorShapeProto] = {}
_SHAPE_PROTOS_KEPT = 256


def _shape_proto(shape: tuple[int, ...]) -> tensor_shape_pb2.TensorShapeProto:
    """A ``TensorShapeProto`` for ``shape``; the few shapes a server answers with are kept
    (copying one is several times quicker than adding its dims one by one)."""
    proto = _SHAPE_PROTOS.get(shape)
    if proto is None:
        Dim = tensor_shape_pb2.TensorShapeProto.Dim
        proto = tensor_shape_pb2.TensorShapeProto(dim=[Dim(size=size) for size in shape])
        if len(_SHAPE_PROTOS) < _SHAPE_PROTOS_KEPT:
            _SHAPE_PROTOS[shape] = proto
    return proto


def _plain_content(proto: TensorProto, max_elements: int | None) -> np.ndarray | None:
    """The common case on its own: numbers in ``tensor_content`` that fit the shape
    exactly; ``None`` for anything else (the full decoder then explains what is wrong)."""
    storage = _CONTENT_STORAGE.get(proto.dtype)
    if storage is None:
        return None
    content = proto.tensor_content
    shape_proto = proto.tensor_shape
    if not content or shape_proto.unknown_rank:
        return None
    shape = tuple([dim.size for dim in shape_proto.dim])
    if len(shape) > MAX_RANK or (shape and min(shape) < 0):
        return None
    count = math.prod(shape)
    if count * storage.itemsize != len(content) or (
        max_elements is not None and count > max_elements
    ):
        return None
    return np.frombuffer(content, storage).reshape(shape)


def _shape_of(proto: TensorProto, name: str) -> tuple[int, ...]:
    if proto.tensor_shape.unknown_rank:
        raise InvalidArgument(f"tensor '{name}': shape must be fully defined (unknown rank)")
    shape = tuple([d.size for d in proto.tensor_shape.dim])
    if shape and min(shape) < 0 and len(shape) <= MAX_RANK:
        raise InvalidArgument(f"tensor '{name}': shape {list(shape)} must be fully defined")
    return check_shape(shape, name)


def _check_count(got: int, count: int, name: str) -> None:
    if got == count or (got == 1 and count > 1):
        return
    raise InvalidArgument(
        f"tensor '{name}': {got} values do not match its shape ({count} elements); "
        "send exactly one value per element, or one value to fill the shape"
    )


def _typed_values(tf_type: int, values: Sequence[object], dtype: np.dtype, name: str) -> np.ndarray:
    try:
        if tf_type in _HALF_BITS:
            bits = np.array(values, dtype=np.int32).astype(np.uint16)
            if tf_type == types_pb2.DT_BFLOAT16:
                return bfloat16_from_bits(bits)
            return bits.view(np.float16)
        if tf_type in _COMPLEX:
            parts = np.array(values, dtype=_COMPLEX[tf_type])
            if parts.size % 2:
                raise InvalidArgument(f"tensor '{name}': complex values need real/imag pairs")
            return parts.view(dtype)
        return array_from_values(values, dtype, name)
    except OverflowError as error:
        raise InvalidArgument(f"tensor '{name}': value out of range for {dtype}: {error}") from None


def _write_typed_values(proto: TensorProto, array: np.ndarray) -> None:
    flat = array.reshape(-1)
    field = getattr(proto, _VALUE_FIELD[proto.dtype])
    if proto.dtype in _HALF_BITS:
        bits = flat.view(np.uint16) if array.dtype in (BFLOAT16, np.float16) else flat
        field.extend(bits.astype(np.int32).tolist())
    elif proto.dtype in _COMPLEX:
        field.extend(flat.view(_COMPLEX[proto.dtype]).tolist())
    else:
        field.extend(flat.tolist())
