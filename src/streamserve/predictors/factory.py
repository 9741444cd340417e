"""Build a :class:`~streamserve.predictors.base.Predictor` from a declarative spec.

- ``targets`` given → remote: each ``grpc://host:port`` (or bare ``host:port``),
  ``grpcs://host:port`` (TLS) or ``http(s)://host:port`` becomes one client of
  ``protocol`` (``tfserving`` or ``v2``), secured as ``security`` says;
  several targets (a list, or comma-separated) are balanced by least outstanding requests.
- no targets, ``model_base_path`` given → embedded: a ``ModelManager`` over that base path
  (its numbered version directories, hot reload included), owned by the predictor.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from streamserve.errors import InvalidArgument
from streamserve.predictors.balancer import BalancedPredictor, TargetPredictor
from streamserve.predictors.base import Predictor
from streamserve.predictors.embedded import EmbeddedPredictor
from streamserve.predictors.remote import RemoteCall
from streamserve.predictors.security import PLAINTEXT, ClientSecurity
from streamserve.predictors.tfserving_grpc import TfServingGrpcPredictor
from streamserve.predictors.tfserving_rest import TfServingRestPredictor
from streamserve.predictors.v2_grpc import V2GrpcPredictor
from streamserve.predictors.v2_rest import V2RestPredictor
from streamserve.repository import ModelConfig, ModelManager, VersionPolicy
from streamserve.repository.availability import require_available

PROTOCOLS = ("tfserving", "v2")


@dataclass(frozen=True)
class PredictorSpec:
    """What to predict with. See the module docstring.

    ``per_call_channel`` opens a new connection per call: only for the benchmark's classic
    baseline. ``file_system_poll_wait_s`` is the embedded repository's rescan period.
    """

    targets: Sequence[str] | None = None
    model_name: str = ""
    model_version: int | None = None
    model_label: str | None = None
    protocol: str = "tfserving"
    model_base_path: str | Path | None = None
    timeout_s: float = 10.0
    per_call_channel: bool = False
    file_system_poll_wait_s: float = 1.0
    security: ClientSecurity = PLAINTEXT  # TLS (grpcs://, https://) and request headers


def create_predictor(spec: PredictorSpec) -> Predictor:
    """A ready predictor; embedded mode blocks until the model's first load attempt is done."""
    if spec.targets:
        members = create_members(spec)
        return members[0] if len(members) == 1 else BalancedPredictor(members)
    if spec.model_base_path is not None:
        return create_embedded_predictor(
            spec.model_base_path,
            spec.model_name,
            spec.model_version,
            file_system_poll_wait_s=spec.file_system_poll_wait_s,
        )
    raise InvalidArgument("give model server targets or a model base path")


def create_members(spec: PredictorSpec) -> list[TargetPredictor]:
    """One remote predictor per target, for callers that wrap each (e.g. circuit breakers)
    before balancing them with :class:`BalancedPredictor`."""
    if spec.protocol not in PROTOCOLS:
        raise InvalidArgument(f"unknown protocol {spec.protocol!r}; use one of {PROTOCOLS}")
    if not spec.model_name:
        raise InvalidArgument("a remote model needs a model name")
    if spec.model_version is not None and spec.model_label is not None:
        raise InvalidArgument("give a model version or a label, not both")
    if spec.protocol == "v2" and spec.model_label is not None:
        raise InvalidArgument("the V2 protocol has no version labels; use a model version")
    targets = parse_targets(spec.targets or ())
    if not targets:
        raise InvalidArgument("no model server targets given")
    return [_remote(target, spec) for target in targets]


def parse_targets(targets: str | Sequence[str]) -> list[str]:
    """Split ``"grpc://a:8500,grpc://b:8500"`` (or a list of such) into normalised targets:
    ``grpc(s)://host:port`` or ``http(s)://host:port``."""
    items = [targets] if isinstance(targets, str) else list(targets)
    parsed = []
    for item in items:
        for raw in item.split(","):
            text = raw.strip()
            if text:
                parsed.append(_normalise_target(text))
    return parsed


def create_embedded_predictor(
    model_base_path: str | Path,
    model_name: str = "",
    model_version: int | None = None,
    mode: str = "embedded",
    file_system_poll_wait_s: float = 1.0,
) -> Predictor:
    """An embedded (or ``mode="fallback"``) predictor that owns its ``ModelManager``.

    ``model_name`` defaults to the base path's directory name. A pinned ``model_version``
    loads just that version; otherwise the latest version is served and hot reloaded.
    Fails fast: :class:`~streamserve.errors.ModelLoadFailed`, with the load error, when no
    version is AVAILABLE after the first load attempt.
    """
    base_path = Path(model_base_path).resolve()
    if not base_path.is_dir():
        raise InvalidArgument(f"model base path {str(base_path)!r} is not a directory")
    name = model_name or base_path.name
    policy = VersionPolicy.latest(1)
    if model_version is not None:
        policy = VersionPolicy.specific([model_version])
    config = ModelConfig(name, base_path, version_policy=policy)
    manager = ModelManager([config], file_system_poll_wait_seconds=file_system_poll_wait_s)
    manager.start()
    try:
        require_available(manager)
        return EmbeddedPredictor(manager, name, model_version, mode=mode, owns_manager=True)
    except BaseException:
        manager.stop()
        raise


def _normalise_target(text: str) -> str:
    scheme, sep, rest = text.partition("://")
    if not sep:
        scheme, rest = "grpc", text
    scheme = scheme.lower()
    if scheme not in ("grpc", "grpcs", "http", "https"):
        raise InvalidArgument(f"model server {text!r}: use grpc://, grpcs://, http:// or https://")
    address = rest.rstrip("/")
    host, colon, port = address.rpartition(":")
    if not colon or not host or not port.isdigit() or "/" in address:
        raise InvalidArgument(f"model server {text!r} must look like {scheme}://host:port")
    return f"{scheme}://{address}"


def _remote(target: str, spec: PredictorSpec) -> TargetPredictor:
    grpc = target.startswith(("grpc://", "grpcs://"))
    call = RemoteCall(
        spec.model_name,
        model_version=spec.model_version,
        model_label=spec.model_label if spec.protocol != "v2" else None,
        timeout_s=spec.timeout_s,
        per_call_channel=spec.per_call_channel,
        security=spec.security,
    )
    if spec.protocol == "v2":
        return (V2GrpcPredictor if grpc else V2RestPredictor)(target, call)
    return (TfServingGrpcPredictor if grpc else TfServingRestPredictor)(target, call)
