"""The model repository: config, file-system source, version lifecycle, labels and A/B splits."""

from streamserve.repository.config import (
    ModelConfig,
    VersionPolicy,
    apply_traffic_splits,
    load_model_configs,
    model_config_from_proto,
    model_config_to_proto,
    model_configs_from_server_config,
    model_server_config_to_proto,
    parse_model_config_file,
    parse_model_config_text,
    parse_traffic_split_file,
    parse_traffic_split_text,
    validate_model_configs,
)
from streamserve.repository.handles import Handle, ServableHandle
from streamserve.repository.manager import Loader, ModelManager
from streamserve.repository.poller import ConfigFilePoller, config_file_poller
from streamserve.repository.states import VersionState, VersionStatus

__all__ = [
    "ConfigFilePoller",
    "Handle",
    "Loader",
    "ModelConfig",
    "ModelManager",
    "ServableHandle",
    "VersionPolicy",
    "VersionState",
    "VersionStatus",
    "apply_traffic_splits",
    "config_file_poller",
    "load_model_configs",
    "model_config_from_proto",
    "model_config_to_proto",
    "model_configs_from_server_config",
    "model_server_config_to_proto",
    "parse_model_config_file",
    "parse_model_config_text",
    "parse_traffic_split_file",
    "parse_traffic_split_text",
    "validate_model_configs",
]
