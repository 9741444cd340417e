"""Model configuration: TF Serving's ``model_config_list`` plus streamserve's A/B splits.

TF Serving reads a text-format ``ModelServerConfig``::

    model_config_list {
      config {
        name: "imagenet"  base_path: "/models/imagenet"  model_platform: "onnx"
        model_version_policy { specific { versions: 1 versions: 2 } }
        version_labels { key: "stable" value: 1 }
        version_labels { key: "canary" value: 2 }
      }
    }

TF Serving's proto has no field for traffic splits, so streamserve reads them from a
separate JSON side file (``--traffic_split_file``) keyed by model name::

    {"imagenet": {"stable": 90, "canary": 10}}

Split keys are version labels of that model or ``"version:N"``; weights are
non-negative numbers (relative, they need not sum to 100).

Every malformed input raises :class:`~streamserve.errors.InvalidArgument` naming the
model and the field at fault.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from streamserve.errors import InvalidArgument

if TYPE_CHECKING:
    from streamserve.protos.gen.tensorflow_serving.config import model_server_config_pb2

VERSION_KEY_PREFIX = "version:"
_VERSION_KEY = re.compile(r"version:(\d+)")
_TF_MODEL_TYPE_TENSORFLOW = 1  # deprecated ModelConfig.model_type enum value
Parsed = TypeVar("Parsed")


# ---------------------------------------------------------------------------
# Version policy
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class VersionPolicy:
    """Which of the versions found on disk should be loaded (TF Serving's ServableVersionPolicy)."""

    kind: Literal["latest", "all", "specific"] = "latest"
    num_versions: int = 1
    versions: tuple[int, ...] = ()

    @classmethod
    def latest(cls, n: int = 1) -> VersionPolicy:
        if n < 1:
            raise InvalidArgument(f"latest version policy needs num_versions >= 1, got {n}")
        return cls("latest", num_versions=n)

    @classmethod
    def all(cls) -> VersionPolicy:
        return cls("all", num_versions=0)

    @classmethod
    def specific(cls, versions: Iterable[int]) -> VersionPolicy:
        chosen = tuple(sorted(set(int(v) for v in versions)))
        if not chosen:
            raise InvalidArgument("specific version policy lists no versions")
        if chosen[0] < 0:
            raise InvalidArgument(f"specific version policy lists a negative version: {chosen[0]}")
        return cls("specific", num_versions=0, versions=chosen)

    def select(self, on_disk: Iterable[int]) -> set[int]:
        """The aspired subset of the versions present on disk."""
        present = set(on_disk)
        if self.kind == "all":
            return present
        if self.kind == "specific":
            return present & set(self.versions)
        return set(sorted(present, reverse=True)[: self.num_versions])

    def __str__(self) -> str:
        if self.kind == "latest":
            return f"latest({self.num_versions})"
        if self.kind == "specific":
            return f"specific({', '.join(map(str, self.versions))})"
        return "all"


# ---------------------------------------------------------------------------
# Model config
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelConfig:
    """One served model. ``traffic_split`` keys are labels or ``"version:N"``."""

    name: str
    base_path: Path
    platform: str = ""
    version_policy: VersionPolicy = field(default_factory=VersionPolicy.latest)
    version_labels: Mapping[str, int] = field(default_factory=dict)
    traffic_split: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "base_path", Path(self.base_path))
        object.__setattr__(self, "version_labels", dict(self.version_labels))
        object.__setattr__(self, "traffic_split", dict(self.traffic_split))


def validate_model_config(config: ModelConfig) -> None:
    """Raise InvalidArgument when one model's config cannot be served."""
    if not config.name:
        raise InvalidArgument("Model config has an empty name")
    if "/" in config.name:
        raise InvalidArgument(f"Model name {config.name!r} must not contain '/'")
    if not str(config.base_path) or str(config.base_path) == ".":
        raise InvalidArgument(f"Model {config.name} has an empty base_path")
    for label, version in config.version_labels.items():
        if not label:
            raise InvalidArgument(f"Model {config.name} has an empty version label")
        if isinstance(version, bool) or not isinstance(version, int) or version < 0:
            raise InvalidArgument(
                f"Model {config.name}: label {label!r} must map to a version number, "
                f"got {version!r}"
            )
    _validate_traffic_split(config)


def validate_model_configs(configs: Iterable[ModelConfig]) -> None:
    """Validate each config and that every model name appears once."""
    seen: set[str] = set()
    for config in configs:
        validate_model_config(config)
        if config.name in seen:
            raise InvalidArgument(
                f"Illegal to list model {config.name} multiple times in config list"
            )
        seen.add(config.name)


def split_key_version(key: str) -> int | None:
    """``"version:3"`` → 3; a label → None."""
    match = _VERSION_KEY.fullmatch(key)
    return int(match.group(1)) if match else None


def _validate_traffic_split(config: ModelConfig) -> None:
    if not config.traffic_split:
        return
    where = f"traffic split of model {config.name}"
    for key, weight in config.traffic_split.items():
        if split_key_version(key) is None:
            if key.startswith(VERSION_KEY_PREFIX):
                raise InvalidArgument(f"{where}: {key!r} is not 'version:<number>'")
            if key not in config.version_labels:
                raise InvalidArgument(
                    f"{where}: {key!r} is neither a version label of the model "
                    f"({sorted(config.version_labels)}) nor 'version:<number>'"
                )
        if isinstance(weight, bool) or not isinstance(weight, int | float):
            raise InvalidArgument(f"{where}: weight of {key!r} must be a number, got {weight!r}")
        if not math.isfinite(weight) or weight < 0:
            raise InvalidArgument(f"{where}: weight of {key!r} must be finite and >= 0")
    if sum(config.traffic_split.values()) <= 0:
        raise InvalidArgument(f"{where}: weights must not all be zero")


# ---------------------------------------------------------------------------
# Text proto (ModelServerConfig)
# ---------------------------------------------------------------------------


def _server_config_module() -> ModuleType:
    from streamserve.protos.gen.tensorflow_serving.config import model_server_config_pb2

    return model_server_config_pb2


def parse_model_config_text(text: str, base_dir: Path | None = None) -> list[ModelConfig]:
    """Parse a text-format ModelServerConfig. Relative base paths resolve against ``base_dir``."""
    from google.protobuf import text_format

    message = _server_config_module().ModelServerConfig()
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as exc:
        raise InvalidArgument(
            f"Invalid model config (text-format ModelServerConfig): {exc}"
        ) from exc
    configs = model_configs_from_server_config(message) or []
    if base_dir is not None:
        configs = [_resolve_base_path(config, base_dir) for config in configs]
    validate_model_configs(configs)
    return configs


def parse_model_config_file(path: str | Path) -> list[ModelConfig]:
    """Read a ``--model_config_file``; relative base paths resolve against the file's folder."""
    path = Path(path)
    base_dir = path.resolve().parent
    return _parse_file(
        path, "model config file", lambda text: parse_model_config_text(text, base_dir=base_dir)
    )


def _parse_file(path: Path, what: str, parse: Callable[[str], Parsed]) -> Parsed:
    """``parse`` of the file's text; either failure is an InvalidArgument naming ``path``."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidArgument(f"Cannot read {what} {path}: {exc}") from exc
    try:
        return parse(text)
    except InvalidArgument as exc:
        raise InvalidArgument(f"{path}: {exc.message}") from exc


def _resolve_base_path(config: ModelConfig, base_dir: Path) -> ModelConfig:
    if config.base_path.is_absolute():
        return config
    return replace(config, base_path=base_dir / config.base_path)


def model_configs_from_server_config(
    message: model_server_config_pb2.ModelServerConfig,
) -> list[ModelConfig] | None:
    """Convert a ModelServerConfig; ``None`` when its oneof is unset (TF Serving: no action)."""
    which = message.WhichOneof("config")
    if which is None:
        return None
    if which != "model_config_list":
        raise InvalidArgument(
            "custom_model_config is not supported; use model_config_list { config { ... } }"
        )
    return [model_config_from_proto(item) for item in message.model_config_list.config]


def model_server_config_to_proto(
    configs: Iterable[ModelConfig],
) -> model_server_config_pb2.ModelServerConfig:
    message: model_server_config_pb2.ModelServerConfig = _server_config_module().ModelServerConfig()
    message.model_config_list.SetInParent()
    for config in configs:
        message.model_config_list.config.append(model_config_to_proto(config))
    return message


def model_config_from_proto(proto: model_server_config_pb2.ModelConfig) -> ModelConfig:
    """One ``config { ... }`` entry → ModelConfig (validated)."""
    config = ModelConfig(
        name=proto.name,
        base_path=Path(proto.base_path),
        platform=_platform_from_proto(proto),
        version_policy=_policy_from_proto(proto),
        version_labels=dict(proto.version_labels),
    )
    validate_model_config(config)
    return config


def model_config_to_proto(config: ModelConfig) -> model_server_config_pb2.ModelConfig:
    """ModelConfig → proto; ``traffic_split`` has no field in TF Serving's proto and is dropped."""
    proto: model_server_config_pb2.ModelConfig = _server_config_module().ModelConfig()
    proto.name = config.name
    proto.base_path = str(config.base_path)
    proto.model_platform = config.platform
    policy = proto.model_version_policy
    if config.version_policy.kind == "latest":
        policy.latest.num_versions = config.version_policy.num_versions
    elif config.version_policy.kind == "all":
        policy.all.SetInParent()
    else:
        policy.specific.versions.extend(config.version_policy.versions)
    for label, version in config.version_labels.items():
        proto.version_labels[label] = version
    return proto


def _platform_from_proto(proto: Any) -> str:
    model_type = getattr(proto, "model_type", 0)
    if not model_type:
        return str(proto.model_platform)
    if proto.model_platform:
        raise InvalidArgument(
            f"Model {proto.name}: illegal to set both model_type (deprecated) and model_platform"
        )
    if model_type != _TF_MODEL_TYPE_TENSORFLOW:
        raise InvalidArgument(f"Model {proto.name}: model_type choice {model_type} not supported")
    return "tensorflow"


def _policy_from_proto(proto: Any) -> VersionPolicy:
    if not proto.HasField("model_version_policy"):
        return VersionPolicy.latest(1)
    policy = proto.model_version_policy
    which = policy.WhichOneof("policy_choice")
    if which == "all":
        return VersionPolicy.all()
    if which == "specific":
        if not policy.specific.versions:
            raise InvalidArgument(
                f"Model {proto.name}: model_version_policy specific {{}} lists no versions"
            )
        return VersionPolicy.specific(policy.specific.versions)
    if which == "latest":
        # TF Serving serves at least one version even for latest { num_versions: 0 }.
        return VersionPolicy.latest(max(policy.latest.num_versions, 1))
    return VersionPolicy.latest(1)


# ---------------------------------------------------------------------------
# Traffic split side file (streamserve extension)
# ---------------------------------------------------------------------------


def parse_traffic_split_text(text: str) -> dict[str, dict[str, float]]:
    """Parse ``{"model": {"label-or-version:N": weight, ...}, ...}``."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidArgument(f"Invalid traffic split JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise InvalidArgument("Traffic split JSON must be an object {model: {target: weight}}")
    splits: dict[str, dict[str, float]] = {}
    for model, weights in data.items():
        if not isinstance(weights, dict) or not weights:
            raise InvalidArgument(
                f"Traffic split for model {model!r} must be a non-empty object {{target: weight}}"
            )
        splits[model] = dict(weights)
    return splits


def parse_traffic_split_file(path: str | Path) -> dict[str, dict[str, float]]:
    return _parse_file(Path(path), "traffic split file", parse_traffic_split_text)


def apply_traffic_splits(
    configs: Iterable[ModelConfig], splits: Mapping[str, Mapping[str, float]]
) -> list[ModelConfig]:
    """Attach splits to their models; a split for a model not in ``configs`` is an error."""
    configs = list(configs)
    unknown = sorted(set(splits) - {config.name for config in configs})
    if unknown:
        raise InvalidArgument(f"Traffic split names models that are not configured: {unknown}")
    result = [
        replace(config, traffic_split=splits[config.name]) if config.name in splits else config
        for config in configs
    ]
    validate_model_configs(result)
    return result


def load_model_configs(
    config_file: str | Path, traffic_split_file: str | Path | None = None
) -> list[ModelConfig]:
    """``--model_config_file`` plus the optional ``--traffic_split_file``."""
    configs = parse_model_config_file(config_file)
    if traffic_split_file is None:
        return configs
    return apply_traffic_splits(configs, parse_traffic_split_file(traffic_split_file))
