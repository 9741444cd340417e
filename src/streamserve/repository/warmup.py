"""Warm a freshly loaded servable before it takes traffic.

The first inference of a new session pays for lazy allocations and kernel selection;
doing it here keeps that latency spike off the request path (TF Serving's
``--enable_model_warmup``).

- With ``assets.extra/tf_serving_warmup_requests`` in the version directory (TF Serving's
  warm-up file: a TFRecord of ``PredictionLog`` protos, at most 1,000), every recorded
  predict / classify / regress / multi-inference request is replayed, in order. A file
  that cannot be read, holds too many records, or whose request fails, fails the load:
  the version never becomes AVAILABLE and the reason shows in ``GetModelStatus`` (as in
  TF Serving).
- Without it, a signature is warmed with zeros (numbers) or empty strings, batch size 1,
  where its input shapes are known. That warm-up's failure is logged, never fatal.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from streamserve.repository.replay import WARMUP_FILE, replay_warmup_file
from streamserve.runtimes.base import DEFAULT_SIGNATURE, Servable, Signature, TensorSpec

log = logging.getLogger(__name__)


def warm_up_version(servable: Servable, version_dir: Path, description: str) -> None:
    """Replay the version's warm-up file (raising when it fails), else warm synthetically."""
    path = version_dir / WARMUP_FILE
    if not path.exists():
        warm_up(servable, description)
        return
    count = replay_warmup_file(servable, path)
    log.info("Replayed %d warm-up requests from %s for %s", count, path, description)


def warm_up(servable: Servable, description: str) -> bool:
    """Run one synthetic request; True when it succeeded. ``description`` names it in logs."""
    try:
        signature = choose_warmup_signature(servable.signatures)
        inputs = synthetic_inputs(signature) if signature is not None else None
        if signature is None or inputs is None:
            log.info("No warm-up for %s: no signature with known input shapes", description)
            return False
        servable.predict(inputs, signature_name=signature.name)
    except Exception as exc:
        log.warning("Warm-up of %s failed (it serves anyway): %s", description, exc)
        return False
    return True


def choose_warmup_signature(signatures: Mapping[str, Signature]) -> Signature | None:
    """Prefer a signature with only numeric inputs (the model's raw graph), then the default."""
    candidates = [s for s in signatures.values() if synthetic_inputs(s) is not None]
    numeric = [s for s in candidates if not any(_is_string(t) for t in s.inputs.values())]
    if numeric:
        return next((s for s in numeric if s.name == DEFAULT_SIGNATURE), numeric[0])
    return next((s for s in candidates if s.name == DEFAULT_SIGNATURE), None) or (
        candidates[0] if candidates else None
    )


def synthetic_inputs(signature: Signature) -> dict[str, np.ndarray] | None:
    """Zeros / empty strings for every input, or None when some input's rank is unknown."""
    inputs: dict[str, np.ndarray] = {}
    for name, spec in signature.inputs.items():
        tensor = _synthetic_tensor(spec)
        if tensor is None:
            return None
        inputs[name] = tensor
    return inputs


def _synthetic_tensor(spec: TensorSpec) -> np.ndarray | None:
    if spec.shape is None:
        return None
    shape = tuple(1 if dim is None or dim < 0 else dim for dim in spec.shape)
    if _is_string(spec):
        return np.full(shape, b"", dtype=object)
    return np.zeros(shape, dtype=spec.dtype)


def _is_string(spec: TensorSpec) -> bool:
    return np.dtype(spec.dtype).kind in ("O", "S", "U")
