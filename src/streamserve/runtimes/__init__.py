"""Runtimes: load a model version directory into a Servable."""

from streamserve.runtimes.base import (
    CLASSIFY_METHOD,
    DEFAULT_SIGNATURE,
    PREDICT_METHOD,
    REGRESS_METHOD,
    LoadOptions,
    Runtime,
    Servable,
    Signature,
    Tensors,
    TensorSpec,
)
from streamserve.runtimes.registry import available_runtimes, load_servable

__all__ = [
    "CLASSIFY_METHOD",
    "DEFAULT_SIGNATURE",
    "PREDICT_METHOD",
    "REGRESS_METHOD",
    "LoadOptions",
    "Runtime",
    "Servable",
    "Signature",
    "TensorSpec",
    "Tensors",
    "available_runtimes",
    "load_servable",
]
