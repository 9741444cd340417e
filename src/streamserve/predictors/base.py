"""The one seam between the stream processor and a model: batch in, batch out.

Embedded inference and every remote client (TF Serving gRPC/REST, V2 gRPC/REST)
implement :class:`Predictor`; the processor knows nothing else about models.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np


@dataclass(frozen=True)
class Prediction:
    outputs: dict[str, np.ndarray]  # every output has the batch's rows along dim 0
    model_name: str
    model_version: int


class Predictor(Protocol):
    """Async, batch-oriented model call. Implementations must be safe to call concurrently.

    Errors: ``InvalidArgument`` when the model rejects the input (not retryable);
    ``Unavailable``/``DeadlineExceeded`` for transient failures (retryable).
    A remote predictor belongs to the event loop of its first call.
    """

    @property
    def mode(self) -> str:
        """ "embedded" | "remote" | "fallback"."""
        ...

    @property
    def target(self) -> str:
        """Where calls go, e.g. "grpc://host:8500" or "embedded://name"."""
        ...

    async def predict(
        self, inputs: Mapping[str, np.ndarray], signature_name: str | None = None
    ) -> Prediction: ...

    async def close(self) -> None: ...


@runtime_checkable
class Probeable(Protocol):
    """A predictor that can tell, without predicting, whether its model answers now."""

    async def probe(self) -> None:
        """Return when the model is loaded (embedded) or reachable and AVAILABLE (remote);
        raise a ``StreamserveError`` saying why not."""
        ...
