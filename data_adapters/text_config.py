"""Text config types: supervised fine-tuning of a Hugging Face causal language model.

The same flow and trainer that fine-tune pi0 / pi0.5 fine-tune a causal LM when the config type is a
``TextConfigType``: the built-in name ``text_sft`` (model and dataset come from ``--pretrained`` and
``--dataset``) or a YAML file with ``kind: text``::

    kind: text
    name: my_chat_sft
    model: Qwen/Qwen2.5-0.5B          # Hub id or local folder (safetensors only, never remote code)
    dataset: org/chat-data            # Hub dataset id, or a local .jsonl / .parquet file or folder
    max_seq_len: 1024
    truncation: false                 # true: cut longer rows; false: a clear error naming the row
    packing: false                    # true: concatenate rows into max_seq_len sequences
    val_fraction: 0.05                # deterministic train / validation split of the rows
    lora_target_modules: null         # null: the usual attention / MLP projections of common LMs
    train: {peak_lr: 2.0e-5, global_batch: 16, max_steps: 1000}

``data_adapters.registry.get_config_type`` dispatches here, so ``TrainConfig.resolve`` and every
other caller reads ``.train`` as for a robot config type. No transformers import in this module.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from data_adapters.train_presets import TEXT_SFT as TEXT_PRESET
from data_adapters.train_presets import TrainPreset
from data_adapters.validation import did_you_mean

TEXT_SFT = "text_sft"
KIND = "text"
TOP_LEVEL_FIELDS = ("kind", "name", "model", "model_revision", "tokenizer", "dataset", "dataset_revision",
                    "max_seq_len", "truncation", "packing", "val_fraction", "lora_target_modules", "train")  # fmt: skip


@dataclass(frozen=True)
class TextConfigType:
    """A causal-LM SFT job's fixed choices (the trainer's ``ct`` for text)."""

    name: str = TEXT_SFT
    model: str | None = None  # Hub id or local folder; None: --pretrained must name one
    model_revision: str | None = None
    tokenizer: str | None = None  # None: the model's own tokenizer
    dataset_id: str | None = None  # Hub dataset id or local file/folder
    dataset_revision: str | None = None
    max_seq_len: int = 512
    truncation: bool = False
    packing: bool = False
    val_fraction: float = 0.05
    lora_target_modules: tuple[str, ...] | None = None
    train: TrainPreset = field(default_factory=lambda: TEXT_PRESET)
    kind: str = KIND
    # What the flow's generic code reads of a config type.
    model_type: str = "causal_lm"
    dataset_hint: str = (
        "a Hub dataset id or a local .jsonl/.parquet file with 'messages' or 'prompt'/'completion'"
    )

    def __post_init__(self) -> None:
        if (
            not isinstance(self.max_seq_len, int)
            or isinstance(self.max_seq_len, bool)
            or self.max_seq_len < 2
        ):
            raise ValueError(f"{self.name}: max_seq_len: must be an integer >= 2, got {self.max_seq_len!r}")
        for name in ("truncation", "packing"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{self.name}: {name}: must be true or false, got {getattr(self, name)!r}")
        if not (isinstance(self.val_fraction, (int, float)) and 0 <= self.val_fraction < 1):
            raise ValueError(f"{self.name}: val_fraction: must be in [0, 1), got {self.val_fraction!r}")
        if self.lora_target_modules is not None:
            modules = self.lora_target_modules
            if isinstance(modules, str) or not all(isinstance(m, str) for m in modules) or not modules:
                raise ValueError(
                    f"{self.name}: lora_target_modules: must be a list of module names, got {modules!r}"
                )
            object.__setattr__(self, "lora_target_modules", tuple(modules))
        if isinstance(self.train, dict):
            object.__setattr__(
                self, "train", TrainPreset(**{**dataclasses.asdict(TEXT_PRESET), **self.train})
            )

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["lora_target_modules"] = list(self.lora_target_modules) if self.lora_target_modules else None
        out["train"]["betas"] = list(self.train.betas)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TextConfigType:
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        if isinstance(values.get("train"), dict):
            train = dict(values["train"])
            train["betas"] = tuple(train.get("betas", TEXT_PRESET.betas))
            values["train"] = TrainPreset(**train)
        return cls(**values)


def is_text_config(name_or_yaml: str) -> bool:
    """``text_sft`` or a YAML file whose top level says ``kind: text``."""
    if str(name_or_yaml) == TEXT_SFT:
        return True
    path = Path(str(name_or_yaml))
    if path.suffix.lower() not in (".yaml", ".yml") or not path.is_file():
        return False
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError:
        return False  # the robot YAML loader reports the syntax error
    return isinstance(data, dict) and data.get("kind") == KIND


def load_text_config(name_or_yaml: str) -> TextConfigType:
    """The built-in ``text_sft`` or a ``kind: text`` YAML file, validated (errors name file and field)."""
    if str(name_or_yaml) == TEXT_SFT:
        return TextConfigType()
    import yaml

    path = Path(name_or_yaml)
    data = yaml.safe_load(path.read_text())
    unknown = sorted(set(data) - set(TOP_LEVEL_FIELDS))
    if unknown:
        hint = did_you_mean(unknown[0], TOP_LEVEL_FIELDS)
        raise ValueError(
            f"{path}: unknown field(s) {unknown}.{hint} Valid fields: {', '.join(TOP_LEVEL_FIELDS)}"
        )
    values = {k: v for k, v in data.items() if k not in ("kind", "dataset", "train")}
    values.setdefault("name", path.stem)
    if data.get("dataset") is not None:
        values["dataset_id"] = str(data["dataset"])
    train = data.get("train") or {}
    if not isinstance(train, dict):
        raise ValueError(f"{path}: train: must be a mapping of preset fields, got {train!r}")
    try:
        preset = dataclasses.replace(
            TEXT_PRESET, **{k: tuple(v) if k == "betas" else v for k, v in train.items()}
        )
        return TextConfigType(**values, train=preset)
    except TypeError as err:
        raise ValueError(f"{path}: train: {err}") from None
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
