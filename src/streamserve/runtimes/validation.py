"""Request checks shared by every runtime: signature lookup, input names, dtypes, shapes.

Messages follow one pattern so clients can fix their request without reading our code:
``input 'x': expected float32[?,64], got int64[2,3] (signature 'serving_default')``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NoReturn

import numpy as np

from streamserve.errors import InvalidArgument
from streamserve.runtimes.base import Signature, TensorSpec

_OBJECT = np.dtype(object)


def dtype_name(dtype: np.dtype) -> str:
    """``float32``, ``int64``, ``string`` (object arrays hold bytes)."""
    return "string" if dtype == _OBJECT else dtype.name


def format_shape(shape: tuple[int | None, ...] | None) -> str:
    if shape is None:
        return "[*]"  # unknown rank
    return "[" + ",".join("?" if dim is None else str(dim) for dim in shape) + "]"


def format_spec(spec: TensorSpec) -> str:
    return dtype_name(spec.dtype) + format_shape(spec.shape)


def format_array(array: np.ndarray) -> str:
    return dtype_name(array.dtype) + format_shape(array.shape)


def describe_inputs(signature: Signature) -> str:
    return ", ".join(f"{name}: {format_spec(spec)}" for name, spec in signature.inputs.items())


def get_signature(signatures: Mapping[str, Signature], signature_name: str) -> Signature:
    """The named signature, or TF Serving's INVALID_ARGUMENT message."""
    signature = signatures.get(signature_name)
    if signature is None:
        raise InvalidArgument(
            f'Serving signature name: "{signature_name}" not found in signature def '
            f"(available: {', '.join(sorted(signatures)) or 'none'})"
        )
    return signature


def is_string_like(array: np.ndarray) -> bool:
    return array.dtype.kind in "OSU"


def check_inputs(signature: Signature, inputs: Mapping[str, np.ndarray]) -> None:
    """Raise ``InvalidArgument`` unless ``inputs`` match the signature exactly.

    Dtypes are strict (no implicit casts, as in TF Serving); string specs accept object,
    ``bytes_`` and ``str_`` arrays (runtimes convert the elements themselves).
    """
    specs = signature.inputs
    if len(inputs) != len(specs):
        _raise_unexpected_or_missing(signature, inputs)
    for name, spec in specs.items():  # as many names as specs, all found: the same names
        array = inputs.get(name)
        if array is None:
            _raise_unexpected_or_missing(signature, inputs)
        if not isinstance(array, np.ndarray) or not _matches(spec, array):
            raise InvalidArgument(_mismatch(signature, spec, array))


class CheckedInputs(dict[str, np.ndarray]):
    """Inputs already checked against ``signature`` (by :func:`checked_inputs`): a
    servable given them for that very signature object skips its own check."""

    __slots__ = ("signature",)

    def __init__(self, signature: Signature, inputs: Mapping[str, np.ndarray]) -> None:
        super().__init__(inputs)
        self.signature = signature


def checked_inputs(signature: Signature, inputs: Mapping[str, np.ndarray]) -> CheckedInputs:
    """``inputs`` checked against ``signature`` (see :func:`check_inputs`), marked so
    that the servable running them does not check them again."""
    check_inputs(signature, inputs)
    return CheckedInputs(signature, inputs)


def _raise_unexpected_or_missing(
    signature: Signature, inputs: Mapping[str, np.ndarray]
) -> NoReturn:
    for name in inputs:
        if name not in signature.inputs:
            raise InvalidArgument(
                f"unexpected input '{name}' for signature '{signature.name}'; "
                f"expected inputs: {describe_inputs(signature)}"
            )
    missing = [name for name in signature.inputs if inputs.get(name) is None]
    raise InvalidArgument(
        f"missing input '{missing[0] if missing else '?'}' for signature '{signature.name}'; "
        f"expected inputs: {describe_inputs(signature)}"
    )


def _matches(spec: TensorSpec, array: np.ndarray) -> bool:
    if spec.dtype == _OBJECT:
        if not is_string_like(array):
            return False
    elif array.dtype != spec.dtype:
        return False
    if spec.shape is None:
        return True
    if array.ndim != len(spec.shape):
        return False
    for want, got in zip(spec.shape, array.shape, strict=True):
        if want is not None and want != got:
            return False
    return True


def _mismatch(signature: Signature, spec: TensorSpec, array: object) -> str:
    got = format_array(array) if isinstance(array, np.ndarray) else type(array).__name__
    return (
        f"input '{spec.name}': expected {format_spec(spec)}, got {got} "
        f"(signature '{signature.name}')"
    )


def resolve_outputs(
    signature: Signature, output_filter: Sequence[str] | None, default: list[str]
) -> list[str]:
    """Output names to compute: ``default`` (all) when no filter, else the filter checked."""
    if not output_filter:
        return default
    names = list(dict.fromkeys(output_filter))  # drop duplicates, keep order
    for name in names:
        if name not in signature.outputs:
            raise InvalidArgument(
                f"output '{name}' not found in signature '{signature.name}'; "
                f"available outputs: {', '.join(signature.outputs)}"
            )
    return names


class SignatureServable:
    """Base of servables that keep their signatures in ``_signatures`` and check each
    call's inputs against the signature it names."""

    _signatures: Mapping[str, Signature]

    @property
    def signatures(self) -> Mapping[str, Signature]:
        return self._signatures

    def checked_signature(self, signature_name: str, inputs: Mapping[str, np.ndarray]) -> Signature:
        """The named signature, once ``inputs`` match it (else InvalidArgument)."""
        signature = get_signature(self._signatures, signature_name)
        if type(inputs) is not CheckedInputs or inputs.signature is not signature:
            check_inputs(signature, inputs)
        return signature
