"""Image records: a file path / ``file://`` / ``http(s)://`` string, JSON
``{"id", "url"|"path"|"b64"}`` or raw image bytes → ``{"images": [bytes]}``; output
``{"id", "source", "model", "predictions": [{"label", "score"}], "latency_ms", "mode"}``
or, with ``output_format="classic"``, the classic example's ``[label=score, ...]`` string.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping, Sequence
from typing import Protocol

import numpy as np

from streamserve.stream.codecs.base import (
    DECODE,
    ENCODE,
    DecodedRecord,
    InputRecord,
    RecordId,
    dumps,
    parse_json_object,
    record_id_of,
)
from streamserve.stream.errors import RecordError
from streamserve.stream.fetch import check_image, sniff_image_format


class ImageFetcherLike(Protocol):
    async def fetch(self, source: str) -> bytes: ...


class ImageCodec:
    """Image references or image bytes in, top-k predictions out.

    ``fetcher`` resolves paths and URLs safely (see :mod:`streamserve.stream.fetch`);
    inline images (raw bytes, ``b64``) get the same content checks. The model's image
    signature takes ``input_name`` (default ``images``, DT_STRING [N] of encoded images)
    and returns ``classes_name`` / ``scores_name`` [N, k].
    """

    def __init__(
        self,
        fetcher: ImageFetcherLike,
        output_format: str = "json",
        signature_name: str | None = None,
        input_name: str = "images",
        classes_name: str = "classes",
        scores_name: str = "scores",
        max_pixels: int = 40_000_000,
    ) -> None:
        if output_format not in ("json", "classic"):
            raise ValueError("output_format must be 'json' or 'classic'")
        self.fetcher = fetcher
        self.output_format = output_format
        self.signature_name = signature_name
        self.input_name = input_name
        self.classes_name = classes_name
        self.scores_name = scores_name
        self.max_pixels = max_pixels

    async def decode(self, record: InputRecord) -> DecodedRecord:
        value = record.value
        if not value:
            raise RecordError(DECODE, "record has no value")
        if sniff_image_format(value) is not None:
            return self._inline(record.position, "bytes", value)
        try:
            text = value.decode("utf-8").strip()
        except UnicodeDecodeError as exc:
            raise RecordError(
                DECODE, "value is neither an image, JSON, nor a path or URL", type(exc).__name__
            ) from exc
        if text.startswith("{"):
            return await self._decode_json(record, text.encode("utf-8"))
        return await self._fetched(record.position, text)

    async def _decode_json(self, record: InputRecord, value: bytes) -> DecodedRecord:
        document = parse_json_object(value)
        record_id = record_id_of(document, record)
        given = [key for key in ("url", "path", "b64") if key in document]
        if len(given) != 1:
            raise RecordError(DECODE, "JSON image record needs exactly one of 'url', 'path', 'b64'")
        key = given[0]
        source = document[key]
        if not isinstance(source, str):
            raise RecordError(DECODE, f"'{key}' must be a string")
        if key != "b64":
            return await self._fetched(record_id, source)
        try:
            data = base64.b64decode(source, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise RecordError(
                DECODE, f"'b64' is not valid base64: {exc}", type(exc).__name__
            ) from exc
        return self._inline(record_id, "b64", data)

    async def _fetched(self, record_id: RecordId, source: str) -> DecodedRecord:
        data = await self.fetcher.fetch(source)
        return self._as_input(record_id, source, data)

    def _inline(self, record_id: RecordId, source: str, data: bytes) -> DecodedRecord:
        check_image(data, self.max_pixels)
        return self._as_input(record_id, source, data)

    def _as_input(self, record_id: RecordId, source: str, data: bytes) -> DecodedRecord:
        images = np.empty(1, dtype=object)
        images[0] = data
        return DecodedRecord(record_id, source, {self.input_name: images})

    def encode(
        self,
        decoded: DecodedRecord,
        rows: Mapping[str, np.ndarray],
        model_name: str,
        version: int,
        latency_ms: float,
        mode: str,
    ) -> bytes:
        predictions = self._predictions(rows)
        if self.output_format == "classic":
            return classic_format(predictions).encode("utf-8")
        return dumps(
            {
                "id": decoded.id,
                "source": decoded.source,
                "model": {"name": model_name, "version": version},
                "predictions": predictions,
                "latency_ms": round(latency_ms, 3),
                "mode": mode,
            }
        )

    def _predictions(self, rows: Mapping[str, np.ndarray]) -> list[dict[str, object]]:
        try:
            classes = np.asarray(rows[self.classes_name]).reshape(-1)
            scores = np.asarray(rows[self.scores_name], dtype=np.float64).reshape(-1)
        except KeyError as exc:
            raise RecordError(
                ENCODE, f"model output {exc.args[0]!r} missing (has {sorted(rows)})", "KeyError"
            ) from exc
        if classes.shape != scores.shape:
            raise RecordError(ENCODE, "classes and scores outputs differ in size")
        return [
            {"label": _label_text(label), "score": round(float(score), 6)}
            for label, score in zip(classes, scores, strict=True)
        ]


def _label_text(label: object) -> str:
    if isinstance(label, bytes):
        return label.decode("utf-8", errors="replace")
    return str(label)


def classic_format(predictions: Sequence[Mapping[str, object]]) -> str:
    """The classic Kafka Streams example's output: ``[label=score, label=score, ...]``."""
    return "[" + ", ".join(f"{p['label']}={p['score']}" for p in predictions) + "]"
