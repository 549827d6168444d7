"""Custom config types from a YAML file: a new robot dataset without code edits.

See `data_adapters/examples/my_robot.yaml` for a documented example, and
`python -m data_adapters.inspect_dataset PATH` for a suggested mapping of a local dataset.
Every field is checked: a typo'd field name fails with the file path and a "did you mean" hint,
bad values fail with the field and value. Check the mapping against the dataset's
`meta/info.json` with `config_types.validate_against_dataset` before training.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from data_adapters.config_types import (
    DEFAULT_MAX_TOKEN_LEN,
    DEFAULT_NORMALIZATION,
    WRIST_SLOTS,
    ConfigType,
    TrainPreset,
    did_you_mean,
)

TOP_LEVEL_FIELDS = (
    "name",
    "extends",
    "dataset",
    "model_type",
    "action_horizon",
    "max_token_len",
    "discrete_state",
    "cameras",
    "state_keys",
    "action_keys",
    "state_dim",
    "action_dim",
    "delta_mask",
    "normalization",
    "wrist_slots",
    "simulator",
    "train",
    "client_keys",
)
DATASET_FIELDS = ("id", "revision", "path")
TRAIN_FIELDS = tuple(f.name for f in dataclasses.fields(TrainPreset))
# Needed when the file does not extend a built-in type.
REQUIRED_WITHOUT_EXTENDS = (
    "model_type",
    "action_horizon",
    "cameras",
    "state_keys",
    "action_keys",
    "state_dim",
    "action_dim",
)


def _reject_unknown(block: dict, allowed: tuple[str, ...], where: str) -> None:
    for key in block:
        if key not in allowed:
            raise ValueError(
                f"{where}: unknown field {key!r}.{did_you_mean(str(key), allowed)} "
                f"Valid fields: {', '.join(allowed)}"
            )


def _as_key_list(value: Any, field_name: str, path: Path) -> tuple[str, ...]:
    # A single key may be written as a plain string.
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise ValueError(f"{path}: {field_name} must be a dataset key or a list of keys, got {value!r}")


def _dataset_fields(value: Any, path: Path) -> tuple[str | None, str | None]:
    """Return (dataset_id or absolute local path, revision)."""
    if isinstance(value, str):
        value = {"id": value}
    if not isinstance(value, dict):
        raise ValueError(
            f"{path}: dataset must be a Hub id or a mapping with id/revision or path, got {value!r}"
        )
    _reject_unknown(value, DATASET_FIELDS, f"{path}: dataset")
    if ("id" in value) == ("path" in value):
        raise ValueError(
            f"{path}: dataset needs exactly one of 'id' (Hub) or 'path' (local folder), got {value!r}"
        )
    if "path" in value:
        # Relative paths are relative to the YAML file, so the file can travel with its dataset.
        local = Path(str(value["path"])).expanduser()
        local = local if local.is_absolute() else (path.parent / local)
        return str(local.resolve()), None
    revision = value.get("revision")
    return str(value["id"]), None if revision is None else str(revision)


def _yaml_number(value: Any) -> Any:
    # PyYAML (YAML 1.1) reads "1e-4" as a string; accept it as the number the user meant.
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _delta_mask(data: dict[str, Any], fields: dict[str, Any], path: Path) -> Any:
    """The YAML's delta_mask; absent or null means no delta dims (an inherited mask needs its action_dim)."""
    mask = data.get("delta_mask")
    if mask is not None:
        return tuple(mask) if isinstance(mask, list) else mask
    action_dim = fields.get("action_dim")
    if not isinstance(action_dim, int) or isinstance(action_dim, bool):
        return ()  # ConfigType reports the bad action_dim
    inherited = fields.get("delta_mask")
    if "delta_mask" not in data and inherited is not None and len(inherited) != action_dim and any(inherited):
        raise ValueError(
            f"{path}: action_dim changed to {action_dim} but the inherited delta_mask {inherited} "
            "has delta dims: set delta_mask explicitly"
        )
    if "delta_mask" not in data and inherited is not None and len(inherited) == action_dim:
        return inherited
    return (False,) * action_dim


def config_from_dict(data: dict[str, Any], *, path: Path, builtins: Mapping[str, ConfigType]) -> ConfigType:
    """Build a ConfigType from parsed YAML (`path` is only used for messages and relative paths).

    ``builtins``: the built-in config types by name (``extends`` starts from one; a custom name may not
    reuse one), passed in by ``data_adapters.registry`` so this module never imports it.
    """
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of config fields, got {type(data).__name__}")
    _reject_unknown(data, TOP_LEVEL_FIELDS, str(path))
    fields: dict[str, Any] = {}
    if data.get("extends") is not None:
        base_name = data["extends"]
        if base_name not in builtins:
            raise ValueError(
                f"{path}: extends names unknown config type {base_name!r}."
                f"{did_you_mean(str(base_name), sorted(builtins))} "
                f"Valid: {', '.join(sorted(builtins))}"
            )
        base = builtins[base_name]
        fields = {f.name: getattr(base, f.name) for f in dataclasses.fields(base)}
        # A different model type brings its own prompt length / normalization unless given.
        if data.get("model_type", base.model_type) != base.model_type:
            new_type = data["model_type"]
            fields["max_token_len"] = DEFAULT_MAX_TOKEN_LEN.get(new_type, base.max_token_len)
            fields["normalization"] = DEFAULT_NORMALIZATION.get(new_type, base.normalization)
            fields["discrete_state"] = False
    else:
        missing = [f for f in REQUIRED_WITHOUT_EXTENDS if f not in data]
        if missing:
            raise ValueError(
                f"{path}: missing required field(s) {missing} (or set 'extends' to a built-in type)"
            )
        model_type = data["model_type"]
        fields = {
            "max_token_len": DEFAULT_MAX_TOKEN_LEN.get(model_type, 0),
            "normalization": DEFAULT_NORMALIZATION.get(model_type, ""),
            "discrete_state": False,
            "dataset_id": None,
            "dataset_revision": None,
            "wrist_slots": WRIST_SLOTS,
            "simulator": None,
            "train": TrainPreset(),
        }
    fields["name"] = data.get("name", path.stem)
    if fields["name"] in builtins:
        raise ValueError(f"{path}: name {fields['name']!r} is a built-in config type; choose another name")
    for key in (
        "model_type",
        "action_horizon",
        "max_token_len",
        "discrete_state",
        "state_dim",
        "action_dim",
        "normalization",
        "simulator",
    ):
        if key in data:
            fields[key] = data[key]
    for key in ("state_keys", "action_keys", "wrist_slots"):
        if key in data:
            fields[key] = _as_key_list(data[key], key, path)
    if "cameras" in data:
        if not isinstance(data["cameras"], dict):
            raise ValueError(f"{path}: cameras must map slot -> dataset key, got {data['cameras']!r}")
        fields["cameras"] = {
            slot: () if keys is None else _as_key_list(keys, f"cameras.{slot}", path)
            for slot, keys in data["cameras"].items()
        }
    fields["delta_mask"] = _delta_mask(data, fields, path)
    if data.get("client_keys") is not None:
        if not isinstance(data["client_keys"], dict):
            raise ValueError(f"{path}: client_keys must map dataset camera key / state / task -> client key, "
                             f"got {data['client_keys']!r}")  # fmt: skip
        fields["client_keys"] = data["client_keys"]
    elif "cameras" in data or "client_keys" in data:
        fields["client_keys"] = None  # an inherited mapping names the base type's cameras: derive anew
    if "dataset" in data:
        fields["dataset_id"], fields["dataset_revision"] = _dataset_fields(data["dataset"], path)
        fields["dataset_hint"] = None
    if "train" in data:
        train = data["train"] or {}
        if not isinstance(train, dict):
            raise ValueError(f"{path}: train must be a mapping of preset overrides, got {train!r}")
        _reject_unknown(train, TRAIN_FIELDS, f"{path}: train")
        train = {key: _yaml_number(value) for key, value in train.items()}
        if isinstance(train.get("betas"), list):
            train["betas"] = tuple(_yaml_number(b) for b in train["betas"])
        try:
            fields["train"] = dataclasses.replace(fields["train"], **train)
        except ValueError as err:
            raise ValueError(f"{path}: train: {err}") from None
    try:
        return ConfigType(**fields)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None


def load_config_yaml(path: str | Path, *, builtins: Mapping[str, ConfigType]) -> ConfigType:
    """Load and validate a custom config type from a YAML file.

    Raises:
        ValueError: the file is missing, not valid YAML, has an unknown field, or an invalid value.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"config YAML {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not valid YAML: {err}") from None
    return config_from_dict(data, path=path, builtins=builtins)
