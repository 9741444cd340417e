"""JSON values ⇄ numpy, shared by the TF Serving REST and V2 JSON codecs.

Strings come in as JSON text or ``{"b64": "..."}``; numbers are checked against the target
dtype (no silent float→int truncation, no integer overflow, no bool↔number mixing).
"""

from __future__ import annotations

import base64
import binascii

import numpy as np

from streamserve.errors import InvalidArgument
from streamserve.tensors._dtypes import BFLOAT16, OBJECT, bytes_array

_ACCEPTED_KINDS = {"b": "b", "i": "iu", "u": "iu", "f": "iuf", "V": "iuf"}  # V: bfloat16


def json_to_array(value: object, dtype: np.dtype, name: str) -> np.ndarray:
    """A JSON scalar or nested list → array of ``dtype``; the nesting gives the shape."""
    if dtype == OBJECT:
        flat: list[bytes] = []
        shape = _collect_strings(value, flat, name)
        return bytes_array(flat, shape)
    try:
        parsed = np.asarray(value)
    except (ValueError, TypeError) as error:
        raise InvalidArgument(
            f"tensor '{name}': ragged or malformed nested lists ({error})"
        ) from None
    return _cast_checked(parsed, dtype, name)


def _cast_checked(parsed: np.ndarray, dtype: np.dtype, name: str) -> np.ndarray:
    if parsed.size == 0:
        return np.empty(parsed.shape, dtype=dtype)
    accepted = _ACCEPTED_KINDS.get(dtype.kind, "")
    if parsed.dtype.kind not in accepted:
        raise InvalidArgument(
            f"tensor '{name}': expected {_describe(dtype)} values, got {_describe(parsed.dtype)}"
        )
    if dtype.kind in "iu" and parsed.dtype != dtype:
        info = np.iinfo(dtype)
        low, high = parsed.min(), parsed.max()
        if low < info.min or high > info.max:
            raise InvalidArgument(
                f"tensor '{name}': value {low if low < info.min else high} out of range for {dtype}"
            )
    return parsed.astype(dtype, copy=False)


def _describe(dtype: np.dtype) -> str:
    if dtype == BFLOAT16:
        return "bfloat16"
    return {"b": "boolean", "i": "integer", "u": "integer", "f": "number", "U": "string"}.get(
        dtype.kind, "mixed or non-numeric"
    )


def _collect_strings(value: object, flat: list[bytes], name: str) -> tuple[int, ...]:
    if isinstance(value, list):
        shapes = [_collect_strings(item, flat, name) for item in value]
        if any(shape != shapes[0] for shape in shapes):
            raise InvalidArgument(f"tensor '{name}': ragged nested lists")
        return (len(value), *(shapes[0] if shapes else ()))
    flat.append(json_to_bytes(value, name))
    return ()


def json_to_bytes(value: object, name: str) -> bytes:
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, dict) and set(value) == {"b64"} and isinstance(value["b64"], str):
        try:
            return base64.b64decode(value["b64"], validate=True)
        except (binascii.Error, ValueError):
            raise InvalidArgument(f"tensor '{name}': invalid base64 in {{\"b64\": ...}}") from None
    raise InvalidArgument(
        f"tensor '{name}': expected a string or {{\"b64\": ...}}, got {type(value).__name__}"
    )


def is_b64(value: object) -> bool:
    return isinstance(value, dict) and set(value) == {"b64"}


def bytes_to_json(value: bytes, force_b64: bool) -> str | dict[str, str]:
    """UTF-8 text when possible (and not forced), else ``{"b64": ...}``."""
    if not force_b64:
        try:
            return value.decode()
        except UnicodeDecodeError:
            pass
    return {"b64": base64.b64encode(value).decode("ascii")}


def array_to_json(array: np.ndarray, name: str, force_b64: bool = False) -> object:
    """Nested lists (or a scalar) of JSON values; strings per :func:`bytes_to_json`."""
    if array.dtype == OBJECT:
        converted = np.empty(array.shape, dtype=OBJECT)
        for index, element in enumerate(array.flat):
            data = element if isinstance(element, bytes) else str(element).encode()
            converted.flat[index] = bytes_to_json(data, force_b64)
        return converted.tolist()
    if array.dtype == BFLOAT16:
        array = array.astype(np.float32)
    if array.dtype.kind not in "biuf":
        raise InvalidArgument(f"tensor '{name}': dtype {array.dtype} cannot be written as JSON")
    return array.tolist()
