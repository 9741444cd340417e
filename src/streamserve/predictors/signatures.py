"""The model's input signature on the client side: one cast and one check in every mode.

JSON numbers carry no dtype: ``[[1, 2, 3, 4]]`` decodes to int64 while the model wants
float32. :func:`conform_inputs` casts numeric inputs to the declared dtypes and then runs
the very :func:`~streamserve.runtimes.validation.check_inputs` the runtimes run, so a
wrong name or shape fails with the same message (and so the same DLQ reason) whether the
model is embedded or behind TF Serving / V2, gRPC or REST.

Remote predictors learn the signature from the server's metadata (TF Serving
``GetModelMetadata`` / ``/metadata``, V2 model metadata) through a :class:`SignatureCache`:
fetched on the first call, kept per model version, fetched again when a reply comes from
another version. A server without metadata leaves inputs as they are.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import numpy as np

from streamserve import tensors
from streamserve.errors import InputRejected, InvalidArgument, Unimplemented
from streamserve.protos.gen.tensorflow.core.framework import types_pb2
from streamserve.runtimes.base import DEFAULT_SIGNATURE, Signature, TensorSpec
from streamserve.runtimes.validation import check_inputs, get_signature

_NUMERIC_KINDS = "biuf"


def conform_inputs(signature: Signature, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``inputs`` with numbers cast to the signature's dtypes, checked against it.

    Raises ``InvalidArgument`` (the runtimes' message) for unknown or missing names, wrong
    shapes or a kind that cannot be cast (e.g. strings for a float input).
    """
    conformed = {name: _cast(signature.inputs.get(name), array) for name, array in inputs.items()}
    check_inputs(_by_name(signature), conformed)
    return conformed


def _by_name(signature: Signature) -> Signature:
    """The signature with its inputs sorted by name: one read back from metadata (a
    protobuf map) has lost the declared order, and messages must read alike in every mode."""
    names = list(signature.inputs)
    if names == sorted(names):
        return signature
    inputs = MappingProxyType(dict(sorted(signature.inputs.items())))
    return Signature(signature.name, inputs, signature.outputs, signature.method_name)


def _cast(spec: TensorSpec | None, array: np.ndarray) -> np.ndarray:
    array = np.asarray(array)
    if spec is None or array.dtype == spec.dtype:
        return array
    if array.dtype.kind in _NUMERIC_KINDS and spec.dtype.kind in _NUMERIC_KINDS:
        return array.astype(spec.dtype)
    return array


@dataclass(frozen=True)
class ModelSignatures:
    """What a metadata call said: the signatures and the version that answered (0: unknown)."""

    signatures: Mapping[str, Signature]
    version: int = 0


MetadataFetch = Callable[[], Awaitable[ModelSignatures]]

NO_SIGNATURES = ModelSignatures(MappingProxyType({}))


class SignatureCache:
    """Signatures from ``fetch``, cached until a reply names another model version."""

    def __init__(self, target: str, fetch: MetadataFetch) -> None:
        self.target = target
        self._fetch = fetch
        self._known: ModelSignatures | None = None
        self._lock: asyncio.Lock | None = None

    async def conform(
        self, inputs: Mapping[str, np.ndarray], signature_name: str | None
    ) -> Mapping[str, np.ndarray]:
        """``inputs`` conformed to the named signature (unchanged when none is known);
        ``InputRejected`` (naming this target) when the signature rejects them."""
        signature = await self.signature(signature_name)
        if signature is None:
            return inputs
        try:
            return conform_inputs(signature, inputs)
        except InvalidArgument as error:
            raise InputRejected(error.message, self.target) from error

    async def signature(self, signature_name: str | None) -> Signature | None:
        """The named signature; None when the server has no metadata. Raises
        ``InvalidArgument`` (the runtimes' message) for an unknown signature name."""
        known = await self._signatures()
        if not known.signatures:
            return None
        try:
            return get_signature(known.signatures, signature_name or DEFAULT_SIGNATURE)
        except InvalidArgument as error:
            raise InputRejected(error.message, self.target) from error

    def observe_version(self, version: int) -> None:
        """A reply came from ``version``: forget the signatures if they were another's."""
        known = self._known
        if known is not None and version and known.version and version != known.version:
            self._known = None

    async def _signatures(self) -> ModelSignatures:
        if self._known is not None:
            return self._known
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self._known is None:
                self._known = await self._fetch_or_none()
            return self._known

    async def _fetch_or_none(self) -> ModelSignatures:
        try:
            return await self._fetch()
        except Unimplemented:
            return NO_SIGNATURES  # a server without metadata: send inputs as decoded


async def conform_default(
    cache: SignatureCache, inputs: Mapping[str, np.ndarray], signature_name: str | None
) -> Mapping[str, np.ndarray]:
    """For V2, whose metadata describes the default signature only: conform inputs for
    the default signature, pass those for any other as they are."""
    if signature_name and signature_name != DEFAULT_SIGNATURE:
        return inputs
    return await cache.conform(inputs, None)


# --------------------------------------------------------------------------- parsing


def signatures_from_tf_json(signature_def_map: Mapping[str, Any]) -> dict[str, Signature]:
    """TF Serving's ``SignatureDefMap`` as JSON (REST ``/metadata``, or the gRPC message
    printed with proto field names) → our signatures."""
    holder = signature_def_map.get("signature_def", signature_def_map)
    return {
        str(key): Signature(
            str(key),
            MappingProxyType(_tf_tensor_specs(signature_def.get("inputs", {}))),
            MappingProxyType(_tf_tensor_specs(signature_def.get("outputs", {}))),
            str(signature_def.get("method_name") or ""),
        )
        for key, signature_def in holder.items()
    }


def _tf_tensor_specs(infos: Mapping[str, Any]) -> dict[str, TensorSpec]:
    specs = {}
    for alias, info in infos.items():
        dtype = tensors.tf_to_dtype(types_pb2.DataType.Value(info.get("dtype", "DT_INVALID")))
        shape_info = info.get("tensor_shape", {})
        shape = None
        if not shape_info.get("unknown_rank"):
            sizes = [int(dim.get("size", -1)) for dim in shape_info.get("dim", [])]
            shape = tuple(None if size < 0 else size for size in sizes)
        specs[alias] = TensorSpec(alias, dtype, shape)
    return specs


def signature_from_v2(inputs: list[Any], outputs: list[Any]) -> Signature:
    """V2 model metadata (``inputs``/``outputs`` of ``{name, datatype, shape}``, as JSON
    dicts or protobuf messages) → the default signature."""
    return Signature(
        DEFAULT_SIGNATURE,
        MappingProxyType(dict(_v2_tensor_spec(tensor) for tensor in inputs)),
        MappingProxyType(dict(_v2_tensor_spec(tensor) for tensor in outputs)),
    )


def _v2_tensor_spec(tensor: Any) -> tuple[str, TensorSpec]:
    def field(key: str) -> Any:
        return tensor[key] if isinstance(tensor, Mapping) else getattr(tensor, key)

    name = str(field("name"))
    shape = tuple(None if int(size) < 0 else int(size) for size in field("shape"))
    return name, TensorSpec(name, tensors.v2_to_dtype(str(field("datatype"))), shape)
