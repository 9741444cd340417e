"""Runtimes: load a model version directory into a Servable."""

from streamserve.runtimes.base import (
    DEFAULT_SIGNATURE,
    Runtime,
    Servable,
    Signature,
    TensorSpec,
    Tensors,
)

__all__ = ["DEFAULT_SIGNATURE", "Runtime", "Servable", "Signature", "TensorSpec", "Tensors"]
