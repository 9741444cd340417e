"""``streamserve stream``'s settings from a TOML file, the environment and flags.

Every long flag has a key: its name with dashes as underscores (``--input-topic`` →
``input_topic``); the keys are derived from the argparse definitions, so a new flag gets one
without further code. Precedence, lowest to highest: the flag's default < the ``--config``
TOML file < ``STREAMSERVE_STREAM_<KEY_UPPER>`` environment variables < flags.

In the file, a ``[kafka]`` table holds librdkafka client properties for every client
(``"bootstrap.servers" = ...`` or the dotted form ``bootstrap.servers = ...``), and optional
``[kafka.consumer]``, ``[kafka.producer]``, ``[kafka.admin]`` tables hold per-role ones; see
:mod:`streamserve.kafka.client_config` for how they merge with ``--kafka-config``, the
``STREAMSERVE_KAFKA_*`` environment and the per-role flags.

Two more tables describe structured records (``--input-format json|avro|...``):
``[features]`` (model input = a field, or a list of fields to stack; its ``[features.defaults]``
sub-table gives defaults for optional fields) and ``[outputs]`` (prediction field name = its
source); see :mod:`streamserve.stream.codecs.features` and
:mod:`~streamserve.stream.codecs.predictions`. The ``--feature``, ``--feature-default`` and
``--output-field`` flags add to them (a flag wins for the same name).

Types follow the flags: ``store_true`` flags take booleans (``true``/``false``, and in the
environment also ``1``/``0``, ``yes``/``no``), repeatable flags take arrays (in the
environment: comma-separated), the rest take the flag's type and choices.
"""

from __future__ import annotations

import argparse
import json
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streamserve.errors import InvalidArgument
from streamserve.kafka.client_config import ROLES, KafkaClientConfig

ENV_PREFIX = "STREAMSERVE_STREAM_"
NOT_KEYS = frozenset({"help", "config", "print_config"})
TABLES = ("features", "outputs")
"""The file's tables besides ``[kafka]``, kept as they are (:attr:`Settings.tables`)."""
"""Flags with no key: the file cannot name itself, and printing is a one-off action."""
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def option_actions(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """The key → flag definition of every long option that has a key."""
    return {
        action.dest: action
        for action in parser._actions
        if any(o.startswith("--") for o in action.option_strings) and action.dest not in NOT_KEYS
    }


def defer_defaults(parser: argparse.ArgumentParser) -> dict[str, Any]:
    """Make argparse leave unset flags out of the namespace (so a given flag can be told
    from a default), keep the defaults aside, and show each default in ``--help``."""
    defaults: dict[str, Any] = {}
    for key, action in option_actions(parser).items():
        default = action.default
        if default is argparse.SUPPRESS:
            continue
        defaults[key] = default
        action.default = argparse.SUPPRESS
        action.required = False
        if action.help is not argparse.SUPPRESS and default not in (None, [], False):
            action.help = f"{action.help or ''} (default: {default})".strip()
    for group in parser._mutually_exclusive_groups:
        group.required = False
    return defaults


@dataclass(frozen=True)
class Settings:
    """The effective value of every key, and the file's ``[kafka]`` tables."""

    values: dict[str, Any]
    kafka_file_layer: KafkaClientConfig
    tables: dict[str, dict[str, Any]] = field(default_factory=dict)


def resolve(
    args: argparse.Namespace,
    parser: argparse.ArgumentParser,
    defaults: Mapping[str, Any],
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Defaults < ``args.config`` TOML file < environment < the flags in ``args``."""
    actions = option_actions(parser)
    values = {key: defaults.get(key) for key in actions}
    values["log_level"] = values.get("log_level") or "INFO"  # a global flag's default
    kafka_layer = KafkaClientConfig()
    tables: dict[str, dict[str, Any]] = {}
    config_file = getattr(args, "config", None)
    if config_file:
        document = read_toml(config_file)
        kafka_layer = kafka_table(document.pop("kafka", {}), str(config_file))
        tables = {
            name: _table(document.pop(name), config_file, name)
            for name in TABLES
            if name in document
        }
        values.update(_converted(document, actions, f"{config_file}", from_text=False))
    env = _environment(os.environ if environ is None else environ)
    values.update(_converted(env, actions, "environment", from_text=True, prefix=ENV_PREFIX))
    values.update({key: getattr(args, key) for key in actions if hasattr(args, key)})
    return Settings(values, kafka_layer, tables)


def _table(value: Any, config_file: str | Path, name: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidArgument(f"{config_file}: '{name}' must be a table")
    return value


def read_toml(path: str | Path) -> dict[str, Any]:
    try:
        with open(Path(path).expanduser(), "rb") as handle:
            return tomllib.load(handle)
    except OSError as exc:
        raise InvalidArgument(f"cannot read --config {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise InvalidArgument(f"--config {path} is not valid TOML: {exc}") from None


def kafka_table(table: Any, source: str) -> KafkaClientConfig:
    """``[kafka]`` (+ ``[kafka.consumer|producer|admin]``) → a client configuration layer."""
    if not isinstance(table, dict):
        raise InvalidArgument(f"{source}: 'kafka' must be a table of librdkafka properties")
    roles = {
        role: _flatten(table.pop(role), f"{source}: [kafka.{role}]")
        for role in ROLES
        if role in table
    }
    return KafkaClientConfig(_flatten(table, f"{source}: [kafka]"), roles)


def _flatten(table: Any, source: str, prefix: str = "") -> dict[str, str]:
    if not isinstance(table, dict):
        raise InvalidArgument(f"{source} must be a table")
    flat: dict[str, str] = {}
    for key, value in table.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, source, f"{name}."))
        elif isinstance(value, bool):
            flat[name] = "true" if value else "false"
        elif isinstance(value, str | int | float):
            flat[name] = str(value)
        else:
            raise InvalidArgument(f"{source}: {name} must be a string, number or boolean")
    return flat


def _environment(environ: Mapping[str, str]) -> dict[str, str]:
    return {
        name[len(ENV_PREFIX) :].lower(): value
        for name, value in environ.items()
        if name.startswith(ENV_PREFIX)
    }


def _converted(
    raw: Mapping[str, Any],
    actions: Mapping[str, argparse.Action],
    source: str,
    *,
    from_text: bool,
    prefix: str = "",
) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for key, value in raw.items():
        where = f"{source}: {prefix + key.upper() if prefix else key}"
        action = actions.get(key)
        if action is None:
            raise InvalidArgument(
                f"{where}: unknown setting; settings are the long flags of `streamserve "
                f"stream --help` with dashes as underscores"
            )
        values[key] = _value(action, value, where, from_text)
    return values


def _value(action: argparse.Action, value: Any, where: str, from_text: bool) -> Any:
    if isinstance(action, argparse._StoreTrueAction):
        return _boolean(value, where, from_text)
    if isinstance(action, argparse._AppendAction):
        items = value.split(",") if from_text and isinstance(value, str) else value
        if not isinstance(items, list):
            items = [items]
        return [_typed(action, item, where) for item in items if item != ""]
    if isinstance(value, list | dict):
        raise InvalidArgument(f"{where}: expected one value, got {type(value).__name__}")
    return _typed(action, value, where)


def _boolean(value: Any, where: str, from_text: bool) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower() if from_text else None
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise InvalidArgument(f"{where}: expected true or false, got {value!r}")


def _typed(action: argparse.Action, value: Any, where: str) -> Any:
    convert: Any = action.type if callable(action.type) else str
    if isinstance(value, bool | dict | list):
        raise InvalidArgument(f"{where}: expected a {getattr(convert, '__name__', 'string')}")
    try:
        typed = convert(value if convert in (int, float) else str(value))
    except (TypeError, ValueError):
        raise InvalidArgument(f"{where}: invalid value {value!r}") from None
    if action.choices is not None and typed not in action.choices:
        choices = ", ".join(str(c) for c in action.choices)
        raise InvalidArgument(f"{where}: {typed!r} is not one of {choices}")
    return typed


# -- printing --------------------------------------------------------------------------------


def to_toml(
    values: Mapping[str, Any],
    kafka: Mapping[str, Any],
    tables: Mapping[str, Mapping[str, Any]] | None = None,
) -> str:
    """The effective settings as a TOML document (None values are left out)."""
    lines = [f"{key} = {_toml_value(value)}" for key, value in values.items() if value is not None]
    for name, table in (tables or {}).items():
        plain = {k: v for k, v in table.items() if not isinstance(v, dict)}
        lines += [
            "",
            f"[{name}]",
            *(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in plain.items()),
        ]
        for sub, subtable in table.items():
            if isinstance(subtable, dict):
                lines += ["", f"[{name}.{sub}]"]
                lines += [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in subtable.items()]
    common = {k: v for k, v in kafka.items() if not isinstance(v, dict)}
    lines += ["", "[kafka]", *(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in common.items())]
    for role, table in kafka.items():
        if isinstance(table, dict):
            lines += ["", f"[kafka.{role}]"]
            lines += [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


def _toml_key(key: str) -> str:
    return _toml_value(key)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    return json.dumps(str(value))
