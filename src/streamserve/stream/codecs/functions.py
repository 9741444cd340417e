"""A codec from two plain functions, for users who bring their own record formats."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence

import numpy as np

from streamserve.stream.codecs.base import DecodedRecord, Encoded, InputRecord

DecodeFn = Callable[[InputRecord], Awaitable[DecodedRecord]]
EncodeFn = Callable[[DecodedRecord, Mapping[str, np.ndarray], str, int, float, str], Encoded]


class CallableCodec:
    """A codec from two functions, for users who bring their own record formats.

    ``encode`` returns bytes or an :class:`OutputRecord`; ``output_topics`` names every
    topic it may route to besides the output topic."""

    def __init__(
        self,
        decode: DecodeFn,
        encode: EncodeFn,
        signature_name: str | None = None,
        output_topics: Sequence[str] = (),
    ) -> None:
        self._decode = decode
        self._encode = encode
        self.signature_name = signature_name
        self.output_topics = tuple(output_topics)

    async def decode(self, record: InputRecord) -> DecodedRecord:
        return await self._decode(record)

    def encode(
        self,
        decoded: DecodedRecord,
        rows: Mapping[str, np.ndarray],
        model_name: str,
        version: int,
        latency_ms: float,
        mode: str,
    ) -> Encoded:
        return self._encode(decoded, rows, model_name, version, latency_ms, mode)
