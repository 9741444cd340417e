"""streamserve: ML model inference on Apache Kafka streams, embedded or remote."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["LocalKafka", "Server", "ServerOptions", "StreamProcessor", "__version__"]

_LAZY = {
    "Server": "streamserve.server",
    "ServerOptions": "streamserve.server",
    "StreamProcessor": "streamserve.stream.processor",
    "LocalKafka": "streamserve.kafka",
}


def __getattr__(name: str) -> Any:
    """Import the public classes on first use, so ``import streamserve`` stays light."""
    if name not in _LAZY:
        raise AttributeError(f"module 'streamserve' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_LAZY[name]), name)
