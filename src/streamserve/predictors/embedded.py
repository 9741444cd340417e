"""In-process inference: the model server's repository and runtimes, without the network.

The :class:`~streamserve.repository.ModelManager` is the very one ``streamserve serve``
uses, so embedded mode gets the same version policies, labels, A/B split and hot reload
(new version directories appear, old ones unload when no call holds them).

Inputs are conformed to the signature first (numbers cast to the declared dtypes, names
and shapes checked), exactly as the remote predictors do, so a record gets the same
answer or the same rejection in every mode.

``servable.predict`` is CPU-bound and releases the GIL (ONNX Runtime), so calls run in a
bounded thread pool, each holding a servable handle for exactly the call's duration: a
version being unloaded stays loaded until its last call returns.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import numpy as np

from streamserve.errors import Unavailable
from streamserve.predictors.base import Prediction
from streamserve.predictors.signatures import conform_inputs
from streamserve.repository.availability import load_error, model_available
from streamserve.runtimes.base import DEFAULT_SIGNATURE
from streamserve.runtimes.validation import get_signature

if TYPE_CHECKING:
    from streamserve.repository import ModelManager


class EmbeddedPredictor:
    """A :class:`~streamserve.predictors.base.Predictor` over a ``ModelManager``.

    ``mode`` is ``"embedded"``, or ``"fallback"`` when it stands in for an unavailable
    remote server. With ``owns_manager=True``, :meth:`close` stops the manager too.
    At most ``max_workers`` calls run at once; the others wait for a thread.
    """

    def __init__(
        self,
        manager: ModelManager,
        model_name: str,
        version: int | None = None,
        label: str | None = None,
        mode: str = "embedded",
        max_workers: int | None = None,
        owns_manager: bool = False,
    ) -> None:
        if version is not None and label is not None:
            raise ValueError("give a model version or a label, not both")
        self.manager = manager
        self.model_name = model_name
        self.version = version
        self.label = label
        self.mode = mode
        self.target = f"embedded://{model_name}"
        self._owns_manager = owns_manager
        workers = max_workers or min(8, os.cpu_count() or 1)
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix=f"{mode}-predict")

    async def predict(
        self, inputs: Mapping[str, np.ndarray], signature_name: str | None = None
    ) -> Prediction:
        loop = asyncio.get_running_loop()
        signature = signature_name or DEFAULT_SIGNATURE
        return await loop.run_in_executor(self._executor, self._predict_now, inputs, signature)

    def _predict_now(self, inputs: Mapping[str, np.ndarray], signature_name: str) -> Prediction:
        with self.manager.handle(self.model_name, version=self.version, label=self.label) as handle:
            servable = handle.servable
            signature = get_signature(servable.signatures, signature_name)
            outputs = servable.predict(conform_inputs(signature, inputs), signature_name)
            return Prediction(dict(outputs), handle.name, handle.version)

    async def probe(self) -> None:
        """:class:`~streamserve.predictors.base.Probeable`: a version is AVAILABLE."""
        if not model_available(self.manager, self.model_name):
            reason = load_error(self.manager, self.model_name)
            raise Unavailable(f"model {self.model_name!r} is not loaded: {reason}")

    async def close(self) -> None:
        await asyncio.to_thread(self._close_now)

    def _close_now(self) -> None:
        self._executor.shutdown(wait=True)
        if self._owns_manager:
            self.manager.stop()
