"""Looking up config types: the built-in ones by name, custom ones from a YAML file, and back from the
dict a run config or an export stores.

To add a built-in type: write a robot module that defines ``CONFIG_TYPES: tuple[ConfigType, ...]`` and
list it in ``_ROBOT_MODULES`` below. Only the flow's ``start`` step looks a name or a YAML path up; every
later step and training process rebuilds the config type from its dict (``config_type_from_dict``).
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from data_adapters import custom_yaml, text_config
from data_adapters.config_types import ConfigType
from data_adapters.text_config import TextConfigType
from data_adapters.validation import did_you_mean

_ROBOT_MODULES = (
    "data_adapters.libero",
    "data_adapters.maniskill",
    "data_adapters.metaworld",
    "data_adapters.calvin",
)


@functools.cache
def builtin_config_types() -> Mapping[str, ConfigType]:
    """The built-in config types by name (built on first use: importing every robot module is not free)."""
    registry: dict[str, ConfigType] = {}
    for module_name in _ROBOT_MODULES:
        for cfg in importlib.import_module(module_name).CONFIG_TYPES:
            if cfg.name in registry:
                raise ValueError(f"config type name {cfg.name!r} is defined twice (second in {module_name})")
            registry[cfg.name] = cfg
    return MappingProxyType(registry)


def list_config_types() -> list[str]:
    """Names of the built-in config types."""
    return sorted(builtin_config_types())


def get_config_type(name_or_yaml: str) -> ConfigType:
    """Return a built-in config type by name, or load a custom one from a .yaml/.yml file.

    Raises:
        ValueError: unknown name (the message lists the valid names and the closest match), or an
            invalid YAML file.
    """
    if text_config.is_text_config(name_or_yaml):
        return text_config.load_text_config(name_or_yaml)
    if str(name_or_yaml).lower().endswith((".yaml", ".yml")):
        return custom_yaml.load_config_yaml(name_or_yaml, builtins=builtin_config_types())
    registry = builtin_config_types()
    if name_or_yaml not in registry:
        raise ValueError(
            f"unknown config type {name_or_yaml!r}.{did_you_mean(str(name_or_yaml), list(registry))}"
            f" Valid names: {', '.join(sorted(registry))}, or a path to a .yaml file."
        )
    return registry[name_or_yaml]


def config_type_from_dict(data: Mapping[str, Any]) -> ConfigType | TextConfigType:
    """The config type a run config or an export stored (``to_dict``); ``kind: text`` marks a text type."""
    if data.get("kind") == text_config.KIND:
        return TextConfigType.from_dict(dict(data))
    return ConfigType.from_dict(data)
