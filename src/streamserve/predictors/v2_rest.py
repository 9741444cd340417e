"""KServe V2 REST ``/infer`` with the binary tensor extension (as tritonclient sends it).

The request is a JSON header followed by each input's raw bytes
(``Inference-Header-Content-Length`` says where the JSON ends), and asks for binary
outputs with ``parameters.binary_data_output``. A reply may mix binary and JSON outputs;
both decode. ``binary=False`` sends plain JSON instead (for servers without the extension).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import numpy as np

from streamserve import tensors
from streamserve.errors import InvalidArgument
from streamserve.predictors.base import Prediction
from streamserve.predictors.http_target import (
    HttpTarget,
    dump_json,
    has_non_finite,
    parse_json_object,
)
from streamserve.predictors.remote import RemoteCall, RemotePredictor
from streamserve.predictors.signatures import (
    ModelSignatures,
    SignatureCache,
    conform_default,
    signature_from_v2,
)
from streamserve.predictors.v2_grpc import SIGNATURE_PARAMETER
from streamserve.runtimes.base import DEFAULT_SIGNATURE

HEADER_LENGTH = "Inference-Header-Content-Length"


class V2RestPredictor(RemotePredictor):
    """Infer via V2 REST on ``target`` (``"http://host:port"`` or ``"https://host:port"``)."""

    def __init__(self, target: str, call: RemoteCall, binary: bool = True) -> None:
        super().__init__(call)
        self.target = target.rstrip("/")
        self.binary = binary
        self._http = HttpTarget(
            self.target, call.timeout_s, call.per_call_channel, security=call.security
        )
        path = f"/v2/models/{quote(call.model_name, safe='')}"
        if call.model_version is not None:
            path += f"/versions/{call.model_version}"
        self._metadata_path = path
        self._infer_path = path + "/infer"
        self._signatures = SignatureCache(self.target, self._fetch_signatures)

    async def predict(
        self, inputs: Mapping[str, np.ndarray], signature_name: str | None = None
    ) -> Prediction:
        inputs = await conform_default(self._signatures, inputs, signature_name)
        body, headers = self._request(inputs, signature_name)
        reply = await self._http.request("POST", self._infer_path, body, headers)
        document, tail = _split_reply(reply.body, reply.headers.get(HEADER_LENGTH))
        outputs = document.get("outputs")
        if not isinstance(outputs, list):
            raise InvalidArgument(f"{self.target}: infer reply has no 'outputs' list")
        chunks = tensors.split_binary_data(outputs, tail)
        decoded = {
            out["name"]: tensors.v2_json_to_numpy(out, chunk)
            for out, chunk in zip(outputs, chunks, strict=True)
        }
        reported = str(document.get("model_version") or "")
        version = int(reported) if reported.isdigit() else self.model_version or 0
        self._signatures.observe_version(version)
        return Prediction(decoded, str(document.get("model_name") or self.model_name), version)

    async def probe(self) -> None:
        """:class:`~streamserve.predictors.base.Probeable`: V2 ``GET .../ready`` is 200."""
        await self._http.request("GET", self._infer_path.removesuffix("/infer") + "/ready")

    async def close(self) -> None:
        await self._http.close()

    async def _fetch_signatures(self) -> ModelSignatures:
        reply = await self._http.request("GET", self._metadata_path)
        metadata = parse_json_object(reply.body, "metadata")
        inputs, outputs = metadata.get("inputs", []), metadata.get("outputs", [])
        signature = signature_from_v2(list(inputs), list(outputs))
        return ModelSignatures({DEFAULT_SIGNATURE: signature}, self.model_version or 0)

    def _request(
        self, inputs: Mapping[str, np.ndarray], signature_name: str | None
    ) -> tuple[bytes, dict[str, str]]:
        parameters: dict[str, Any] = {"binary_data_output": self.binary}
        if signature_name:
            parameters[SIGNATURE_PARAMETER] = signature_name
        arrays = {name: np.asarray(array) for name, array in inputs.items()}
        entries, chunks = [], []
        for name, array in arrays.items():
            entry, chunk = tensors.numpy_to_v2_json(name, array, binary=self.binary)
            entries.append(entry)
            if chunk is not None:
                chunks.append(chunk)
        document = {"inputs": entries, "parameters": parameters}
        if not self.binary:
            body = dump_json(document, allow_nan=has_non_finite(arrays.values()))
            return body, {"Content-Type": "application/json"}
        header = dump_json(document)
        headers = {
            "Content-Type": "application/octet-stream",
            HEADER_LENGTH: str(len(header)),
        }
        return b"".join([header, *chunks]), headers


def _split_reply(body: bytes, header_length: str | None) -> tuple[dict[str, Any], memoryview]:
    if header_length is None:
        return parse_json_object(body, "infer"), memoryview(b"")
    if not header_length.isdigit() or int(header_length) > len(body):
        raise InvalidArgument(f"bad {HEADER_LENGTH} {header_length!r} in the infer reply")
    view = memoryview(body)
    split = int(header_length)
    return parse_json_object(view[:split], "infer"), view[split:]
