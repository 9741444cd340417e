"""Who may load, unload and reload models over the network (as Triton's ``--model-control-mode``).

Repository control requests (V2 ``/v2/repository/models/{m}/load|unload`` over REST and
gRPC, TF Serving ``ModelService/HandleReloadConfigRequest``) change what the server
serves and make it read files, so they are refused unless the operator opts in:

- ``--model_control_mode=none`` (default): every such request is refused with
  ``PERMISSION_DENIED`` (REST 403, ``{"error": ...}`` naming the flag that enables it);
  served models stay as they are. The model config file (``--model_config_file``, with
  its poller) still works: it is the operator's, not the network's.
- ``--model_control_mode=explicit``: the requests are served, but a model may only be
  loaded from a base path that resolves (symlinks and ``..`` included) inside one of the
  ``--model_repository_root`` directories, or from a base path the server was started
  with. A refused path gets one and the same message whether it exists or not.
- ``--model_control_token_file=FILE`` (with ``explicit``): the requests must also carry
  ``Authorization: Bearer <token>`` (REST header, or gRPC metadata ``authorization``),
  compared in constant time with the file's content (surrounding whitespace stripped);
  a missing or wrong token is ``UNAUTHENTICATED`` (REST 401).
"""

from __future__ import annotations

import hmac
import os
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from streamserve.errors import Code, InvalidArgument, SetupError, StreamserveError

if TYPE_CHECKING:
    from streamserve.server.context import ServerContext
    from streamserve.server.core import InferenceCore
from streamserve.repository import ModelConfig

MODES = ("none", "explicit")
_BEARER = "bearer "


class PermissionDenied(StreamserveError):
    code = Code.PERMISSION_DENIED


class Unauthenticated(StreamserveError):
    code = Code.UNAUTHENTICATED


@dataclass(frozen=True)
class ModelControl:
    """The repository-control policy of one server (see the module docstring)."""

    mode: str = "none"
    roots: tuple[Path, ...] = ()  # resolved
    startup_paths: frozenset[Path] = frozenset()  # resolved base paths configured at start
    token: bytes | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise InvalidArgument(
                f"--model_control_mode must be one of {', '.join(MODES)}, got {self.mode!r}"
            )

    @classmethod
    def create(
        cls,
        mode: str = "none",
        roots: Iterable[str | Path] = (),
        token_file: str | Path | None = None,
        startup_base_paths: Iterable[str | Path] = (),
    ) -> ModelControl:
        token = None
        if token_file:
            try:
                token = Path(token_file).read_bytes().strip()
            except OSError as exc:
                raise SetupError(
                    f"cannot read --model_control_token_file {token_file}: {exc.strerror or exc}"
                ) from None
            if not token:
                raise SetupError(f"--model_control_token_file {token_file} is empty")
        return cls(
            mode=mode,
            roots=tuple(_resolved(root) for root in roots),
            startup_paths=frozenset(_resolved(path) for path in startup_base_paths),
            token=token,
        )

    @property
    def enabled(self) -> bool:
        return self.mode == "explicit"

    def authorize(self, authorization: str | None) -> None:
        """Refuse the request unless control is enabled and the token (if any) matches.

        ``authorization`` is the ``Authorization`` header or ``authorization`` metadata.
        """
        if not self.enabled:
            raise PermissionDenied(
                "Model control is disabled: this server does not load, unload or reload "
                "models on request. Start it with --model_control_mode=explicit (and "
                "--model_repository_root=DIR for the directories models may be loaded from) "
                "to allow it."
            )
        if self.token is None:
            return
        given = b""
        if authorization and authorization[: len(_BEARER)].lower() == _BEARER:
            given = authorization[len(_BEARER) :].strip().encode("utf-8", "replace")
        if not hmac.compare_digest(given, self.token):
            raise Unauthenticated(
                "Model control needs a valid token: send 'Authorization: Bearer <token>' "
                "(gRPC metadata 'authorization'), the token being the content of "
                "--model_control_token_file"
            )

    def check_base_path(self, base_path: str | Path) -> None:
        """Refuse a base path outside the roots, with a message that says nothing about
        whether it exists."""
        real = _resolved(base_path)
        if real in self.startup_paths or any(real.is_relative_to(root) for root in self.roots):
            return
        raise PermissionDenied(
            f"base_path {str(base_path)!r} is not inside a model repository root; models "
            "may only be loaded from below a --model_repository_root directory"
        )

    def check_configs(self, configs: Sequence[ModelConfig]) -> list[ModelConfig]:
        """Check every config's base path; relative ones are made absolute."""
        checked = []
        for config in configs:
            self.check_base_path(config.base_path)
            checked.append(replace(config, base_path=Path(config.base_path).absolute()))
        return checked


def grpc_authorization(context: Any) -> str | None:
    """The ``authorization`` metadata of a gRPC call (a ``grpc.aio.ServicerContext``)."""
    for key, value in context.invocation_metadata() or ():
        if key == "authorization":
            return value if isinstance(value, str) else bytes(value).decode("utf-8", "replace")
    return None


def _resolved(path: str | Path) -> Path:
    return Path(os.path.realpath(path))


def control_for(context: ServerContext) -> ModelControl:
    """The server's policy, built once from its options and its initially served models."""
    control = _controls.get(context.core)
    if control is None:
        options, manager = context.options, context.manager
        control = _controls[context.core] = ModelControl.create(
            mode=options.model_control_mode,
            roots=options.model_repository_roots,
            token_file=options.model_control_token_file,
            startup_base_paths=[manager.config(name).base_path for name in manager.model_names()],
        )
    return control


_controls: weakref.WeakKeyDictionary[InferenceCore, ModelControl] = weakref.WeakKeyDictionary()


__all__ = [
    "MODES",
    "ModelControl",
    "PermissionDenied",
    "Unauthenticated",
    "control_for",
    "grpc_authorization",
]
