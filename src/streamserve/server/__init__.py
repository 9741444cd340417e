"""The model server: TF Serving and KServe V2 protocols over one :class:`InferenceCore`.

``from streamserve.server import Server, ServerOptions`` — exported lazily, so that
importing ``streamserve.server.cli`` (for ``streamserve --help``) stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from streamserve.server.app import Server, ServerContext, ServerOptions
    from streamserve.server.core import InferenceCore

__all__ = ["InferenceCore", "Server", "ServerContext", "ServerOptions"]


def __getattr__(name: str) -> Any:
    if name in ("Server", "ServerContext", "ServerOptions"):
        from streamserve.server import app

        return getattr(app, name)
    if name == "InferenceCore":
        from streamserve.server.core import InferenceCore

        return InferenceCore
    raise AttributeError(f"module 'streamserve.server' has no attribute {name!r}")
