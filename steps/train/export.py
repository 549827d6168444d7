"""The final, self-contained model folder written at the end of training.

``<export_dir>/``::

    model.safetensors + config.json   full weights (LoRA merged in), loadable by model_zoo.checkpoint.load_model
    adapter/                          LoRA only: the adapter (peft format) + fully trainable weights
    norm_stats.json                   statistics the model was trained with
    train_config.json                 the resolved TrainConfig
    config_type.json                  the resolved config type (key mapping, horizon, normalization)
    tokenizer.model                   the SentencePiece file the prompts were tokenized with
    vla_sft_export.json               what this is: step, weights source (last/best, EMA or raw), files

Written into a temporary sibling folder and renamed into place, so a reader never sees half of it.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

EXPORT_META = "vla_sft_export.json"
TOKENIZER_FILE = "tokenizer.model"


def write_export(
    model: torch.nn.Module,
    export_dir: str | os.PathLike,
    *,
    train_config,
    config_type,
    norm_stats_path: str | os.PathLike,
    tokenizer_path: str | os.PathLike,
    step: int,
    source: str,
    ema_weights: dict[str, torch.Tensor] | None,
) -> Path:
    """Write the export folder from a plain (unwrapped, unsharded) model; rank 0 only.

    ``ema_weights`` (name -> tensor of trainable parameters) replace the raw weights when given. The
    model is modified in place (EMA copied in, LoRA merged): call this last.
    """
    from model_zoo.checkpoint import save_checkpoint
    from model_zoo.files import write_dir_atomically
    from steps.train.ema import copy_weights_into

    def write(folder: Path) -> None:
        copy_weights_into(model, ema_weights)
        lora = hasattr(model, "peft_config")
        if lora:
            from model_zoo.lora import merge_lora, save_adapter  # imports peft: only for LoRA models

            save_adapter(model, folder / "adapter")
            merge_lora(model)
        weights = folder / "weights"
        save_checkpoint(model, weights, config={"train_config": train_config.to_dict()}, overwrite=True)
        for item in weights.iterdir():  # save_checkpoint writes a whole folder; flatten it into ours
            os.replace(item, folder / item.name)
        weights.rmdir()
        shutil.copyfile(norm_stats_path, folder / "norm_stats.json")
        shutil.copyfile(tokenizer_path, folder / TOKENIZER_FILE)
        train_config.to_json(folder / "train_config.json")
        (folder / "config_type.json").write_text(
            json.dumps(config_type.to_dict(), indent=2, sort_keys=True, default=list) + "\n"
        )
        meta = {
            "format": "vla-sft export v1",
            "config_type": config_type.name,
            "model_type": config_type.model_type,
            "step": step,
            "weights_from": source,
            "ema": ema_weights is not None,
            "finetune": "lora" if lora else "full",
            "tokenizer": {"file": TOKENIZER_FILE, "source": str(tokenizer_path)},
            "norm_stats": "norm_stats.json",
            "adapter": "adapter" if lora else None,
        }
        (folder / EXPORT_META).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")

    return write_dir_atomically(export_dir, write)
