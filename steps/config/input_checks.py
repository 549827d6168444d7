"""Checks of ``start`` that read a little more than the command line: the pretrained weights' header, the
dataset's episode count, every ``--train_options`` value, a YAML's own dataset. Each raises ``InputError`` with one line naming the option; none imports torch or reads dataset rows.
"""

from __future__ import annotations

import dataclasses
import json
import re
import types
import typing
from pathlib import Path
from typing import Any

from steps.errors import UserError


class InputError(UserError):
    """A command-line value that cannot work; the message is one line naming the option."""


def check_pretrained_weights(pretrained: str, model_type: str, variant: str = "real") -> None:
    """A local checkpoint's safetensors header(s) parse, the data is as long as they say, and the keys are
    a ``model_type`` model's (``model_zoo.checkpoint_header``). Reads headers only (kilobytes)."""
    from model_zoo.checkpoint_header import check_pi0_keys, read_safetensors_header
    from model_zoo.hub import CheckpointError, resolve_weight_files

    path = Path(pretrained).expanduser()
    try:
        shapes: dict = {}
        for file in resolve_weight_files(path):  # a local file or folder: nothing is downloaded
            shapes.update(read_safetensors_header(file))
        check_pi0_keys(shapes, model_type, variant, source=str(path))
    except (CheckpointError, OSError) as exc:
        raise InputError(f"--pretrained: {' '.join(str(exc).split())}") from None


def check_eval_episodes(eval_episodes: int, total_episodes: Any, where: str) -> None:
    """At least one episode must be left for training (``total_episodes`` from meta/info.json)."""
    if (
        isinstance(total_episodes, bool)
        or not isinstance(total_episodes, int)
        or eval_episodes < total_episodes
    ):
        return
    raise InputError(
        f"--eval_episodes: {eval_episodes} episodes held out, but {where} has {total_episodes} "
        f"(meta/info.json total_episodes) and training needs at least one; use at most {total_episodes - 1}"
    )


def dataset_info(path: str | Path) -> dict | None:
    """``meta/info.json`` of a local dataset folder, or None when it has none (or it is unreadable)."""
    from data_adapters.lerobot_format import INFO_PATH

    try:
        return json.loads((Path(path) / INFO_PATH).read_text())
    except (OSError, ValueError):
        return None


def yaml_names_dataset(config_type: str) -> bool:
    """True when ``config_type`` is a YAML file that sets ``dataset:`` itself (not through ``extends``)."""
    import yaml

    path = Path(config_type).expanduser()
    if path.suffix not in (".yaml", ".yml") or not path.is_file():
        return False
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return False  # get_config_type already read it; nothing new to say here
    return isinstance(data, dict) and data.get("dataset") is not None


# --- --train_options values ---------------------------------------------------------------------


def check_train_option_types(options: dict) -> None:
    """Each value has its TrainConfig field's type (``"bf16"`` is a string, ``2`` an integer, ...)."""
    from steps.train.config import TrainConfig

    hints = typing.get_type_hints(TrainConfig)
    for name, value in options.items():
        hint = hints.get(name)
        if hint is not None and not _fits(value, hint):
            raise InputError(f"--train_options: {name} must be {_describe(hint)}, got {json.dumps(value)}")


def check_train_config(rc, world_size: int) -> None:
    """Build the run's TrainConfig as ``train`` will (placeholder paths) and resolve it for the world size,
    so every field's own validation (allowed values, ranges, batch divisibility) runs in ``start``."""
    from steps.train.launch import NodeInputs, build_train_config

    # A stand-in for the held-out episodes: their number decides what validation can do (export_from).
    held_out = list(range(-rc.eval.episodes, 0))
    try:
        config = build_train_config(rc, NodeInputs(".", ".", "."), train_episodes=None, val_episodes=held_out,
                                    checkpoint_dir=".", export_dir=None, metrics_file=None, tracking_uri=None,
                                    announce=False)  # fmt: skip
        config.resolve(world_size)
    except ValueError as exc:
        # "precision: must be ...", "lora.rank: ...", "global_batch: ... micro_batch 3"
        message = " ".join(str(exc).split())
        named = any(re.search(rf"\b{re.escape(name)}\b", message) for name in rc.train.options or {})
        raise InputError(f"--train_options: {message}" if named else message) from None


def _fits(value: Any, hint: Any) -> bool:
    if hint is Any:
        return True
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, arm) for arm in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin is tuple:
        item = typing.get_args(hint)[0]
        return isinstance(value, (list, tuple)) and all(_fits(v, item) for v in value)
    if dataclasses.is_dataclass(hint):  # LoraSettings: a JSON object of its fields
        return isinstance(value, (dict, hint))
    return True  # a type this check does not know: the field's own validation decides


def _describe(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(arm) for arm in typing.get_args(hint))
    names = {type(None): "null", bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    if hint in names:
        return names[hint]
    if origin is tuple:
        return f"a list of {_describe(typing.get_args(hint)[0]).removeprefix('an ').removeprefix('a ')}s"
    if dataclasses.is_dataclass(hint):
        return f"a JSON object of {hint.__name__} fields"
    return str(hint)
