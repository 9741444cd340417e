"""Whether a manager's models are AVAILABLE, and fail-fast start-up when they are not.

TF Serving refuses to start when a model it was started with cannot load; ``serve`` and
embedded ``stream`` do the same through :func:`require_available`, and health checks ask
:func:`model_available`.
"""

from __future__ import annotations

from streamserve.errors import ModelLoadFailed, StreamserveError
from streamserve.repository.manager import ModelManager
from streamserve.repository.states import VersionState


def model_available(manager: ModelManager, name: str) -> bool:
    """Whether ``name`` has a version AVAILABLE."""
    try:
        statuses = manager.status(name)
    except StreamserveError:  # unknown model, or no version found yet
        return False
    return any(status.state == VersionState.AVAILABLE for status in statuses)


def load_error(manager: ModelManager, name: str) -> str:
    """Why ``name`` has no version AVAILABLE: each version's load error, or the source's."""
    try:
        statuses = manager.status(name)
    except StreamserveError as exc:
        return exc.message
    errors = [f"version {s.version}: {s.error_message}" for s in statuses if s.error_message]
    return "; ".join(errors) or "no version became available"


def require_available(manager: ModelManager, hint: str = "") -> None:
    """Raise :class:`ModelLoadFailed` naming every model without an AVAILABLE version and
    its load error (call after ``manager.start()``, which waits for the first loads)."""
    problems = [
        f"model {name!r}: {load_error(manager, name)}"
        for name in manager.model_names()
        if not model_available(manager, name)
    ]
    if problems:
        suffix = f" ({hint})" if hint else ""
        raise ModelLoadFailed(f"initial model load failed{suffix}: " + "; ".join(problems))
