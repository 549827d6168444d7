"""A tiny trained-shape export folder (the layout of steps/train/export.py), built without training."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from data_adapters.normalization import NormStats, Stats
from data_adapters.registry import get_config_type
from data_adapters.tokenizer import train_tiny_tokenizer
from model_zoo.checkpoint import save_checkpoint
from model_zoo.config import ModelConfig
from model_zoo.pi0 import Pi0Model


def _stats(dim: int, rng: np.random.Generator) -> Stats:
    mean = rng.normal(size=dim)
    std = rng.uniform(0.5, 2.0, size=dim)
    return Stats(mean=mean, std=std, q01=mean - 2 * std, q99=mean + 2 * std)


def make_tiny_export(
    root: Path, config_type_name: str = "pi05_metaworld", seed: int = 0, variant: str = "tiny"
) -> Path:
    """Random weights of ``variant`` (benchmarks pass "real"), random stats, a tiny tokenizer."""
    cfg = get_config_type(config_type_name)
    torch.manual_seed(seed)
    model = Pi0Model(
        ModelConfig(
            model_type=cfg.model_type,
            variant=variant,
            action_horizon=cfg.action_horizon,
            max_token_len=cfg.max_token_len,
        )
    )
    export = save_checkpoint(model, root / "export")
    rng = np.random.default_rng(seed)
    NormStats(state=_stats(cfg.state_dim, rng), actions=_stats(cfg.action_dim, rng)).save(
        export / "norm_stats.json"
    )
    train_tiny_tokenizer(export / "tokenizer.model")
    (export / "config_type.json").write_text(json.dumps(cfg.to_dict(), default=list))
    (export / "train_config.json").write_text(json.dumps({"seed": seed}))
    return export
