"""Evaluate an exported model on held-out episodes.

Minimal for now (issue 6): the flow-matching validation loss with the same fixed noise and time per
frame as training's validation (``steps.data_loader.ValSamples``), so the number is comparable with
``val/loss`` during training. The evaluation issue adds action-chunk errors after sampling, plots and
closed-loop simulator evaluation behind the same entry point, ``evaluate_export``.

Only the export folder is read (weights, norm stats, tokenizer, resolved train config and config type),
so evaluation needs nothing from the training process. torch is imported lazily.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class EvalResult:
    metrics: dict[str, float]
    num_samples: int
    episodes: list[int]
    seconds: float
    details: dict = field(default_factory=dict)


def load_export_config_type(export_dir: str | os.PathLike):
    """The ConfigType the model was trained with, rebuilt from ``config_type.json`` in the export."""
    from data_adapters.config_types import ConfigType

    return ConfigType.from_dict(json.loads((Path(export_dir) / "config_type.json").read_text()))


def evaluate_export(
    export_dir: str | os.PathLike,
    dataset_root: str | os.PathLike,
    episodes: Sequence[int],
    *,
    max_samples: int = 256,
    batch_size: int = 8,
    seed: int = 0,
    device: str = "cpu",
) -> EvalResult:
    """Validation loss of the exported model on ``episodes`` of the dataset (at most ``max_samples`` frames).

    Metrics: ``val_loss`` (mean over all 32 padded action dims, openpi's training loss) and
    ``val_loss_robot_dims`` (only the robot's own action dims).
    """
    import torch

    from data_adapters.lerobot_reader import LeRobotFrames
    from data_adapters.normalization import NormStats
    from data_adapters.tokenizer import PromptTokenizer
    from data_adapters.transforms import InputTransform, collate
    from model_zoo.checkpoint import load_model
    from steps.data_loader import ValSamples, evenly_spaced

    started = time.perf_counter()
    export_dir = Path(export_dir)
    episodes = [int(e) for e in episodes]
    if not episodes:
        raise ValueError("episodes: no held-out episodes to evaluate on (raise --eval_episodes)")
    if max_samples <= 0 or batch_size <= 0:
        raise ValueError(f"max_samples / batch_size: must be > 0, got {max_samples} / {batch_size}")
    train_config = json.loads((export_dir / "train_config.json").read_text())
    ct = load_export_config_type(export_dir)
    norm_stats = NormStats.load(export_dir / "norm_stats.json")
    tokenizer = PromptTokenizer(export_dir / "tokenizer.model", ct.max_token_len)
    model = load_model(export_dir).to(device).eval()

    frames = LeRobotFrames(dataset_root, state_keys=ct.state_keys, action_keys=ct.action_keys,
                           camera_keys=ct.camera_keys, horizon=ct.action_horizon, episodes=episodes)  # fmt: skip
    indices = evenly_spaced(len(frames), max_samples)
    transform = InputTransform(ct, norm_stats, tokenizer, train=False)
    samples = ValSamples(frames, transform, indices, seed=int(train_config.get("seed", seed)),
                         horizon=ct.action_horizon)  # fmt: skip
    loader = torch.utils.data.DataLoader(samples, batch_size=batch_size, shuffle=False, collate_fn=collate)
    total_all = total_robot = 0.0
    count_all = count_robot = 0
    with torch.no_grad():
        for batch in loader:
            noise, t = batch.pop("noise"), batch.pop("time")
            batch.pop("position", None)
            per_element = model.compute_loss(_to(batch, device), noise.to(device), t.to(device)).float()
            total_all += float(per_element.sum())
            count_all += per_element.numel()
            robot = per_element[..., : ct.action_dim]
            total_robot += float(robot.sum())
            count_robot += robot.numel()
    metrics = {
        "val_loss": total_all / count_all,
        "val_loss_robot_dims": total_robot / count_robot,
        "val_samples": float(len(samples)),
    }
    return EvalResult(metrics=metrics, num_samples=len(samples), episodes=episodes,
                      seconds=time.perf_counter() - started)  # fmt: skip


def _to(batch, device):
    import torch

    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, dict):
        return {k: _to(v, device) for k, v in batch.items()}
    return batch
