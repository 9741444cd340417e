"""What the four remote predictors share: the model they ask for and how they call it."""

from __future__ import annotations

from dataclasses import dataclass

from streamserve.predictors.security import PLAINTEXT, ClientSecurity
from streamserve.predictors.signatures import SignatureCache
from streamserve.runtimes.base import Signature


@dataclass(frozen=True)
class RemoteCall:
    """A model on a server (by version, by label, or the latest) and the call's options."""

    model_name: str
    model_version: int | None = None
    model_label: str | None = None  # TF Serving only; V2 has no labels
    timeout_s: float = 10.0
    per_call_channel: bool = False
    security: ClientSecurity = PLAINTEXT

    def __post_init__(self) -> None:
        if self.model_version is not None and self.model_label is not None:
            raise ValueError("give a model version or a label, not both")


class RemotePredictor:
    """Base of the remote predictors: ``mode`` and the model they address."""

    mode = "remote"
    _signatures: SignatureCache  # set by each protocol's predictor

    def __init__(self, call: RemoteCall) -> None:
        self.call = call
        self.model_name = call.model_name
        self.model_version = call.model_version
        self.model_label = call.model_label
        self.timeout_s = call.timeout_s

    async def signature(self, signature_name: str | None = None) -> Signature | None:
        """The model's named signature from the server's metadata (cached); None when the
        server has no metadata."""
        return await self._signatures.signature(signature_name)
