"""The inference policy: raw robot observations in, action chunks in robot units out.

One code path for evaluation, the registered MLflow model and closed-loop rollouts:
raw observation -> ``InputTransform`` (train=False, no augmentation) -> ``collate`` ->
``Pi0Model.sample_actions`` -> ``OutputTransform`` (slice, unnormalize, undo delta).

An observation is a dict in the reader's raw-item format, minus the actions::

    {"images": {dataset camera key: uint8 [h, w, 3]}, "state": float [state_dim], "task": str}

``Policy.from_export(folder)`` loads the self-contained folder that training exports
(``steps/train/export.py``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np


class Policy:
    """Joins the input transform, the model and the output transform for inference.

    Args:
        model: a ``Pi0Model`` (plain, LoRA merged).
        config_type: the ``ConfigType`` the model was trained with.
        norm_stats: the ``NormStats`` the model was trained with.
        tokenizer: a ``PromptTokenizer`` with ``max_len == config_type.max_token_len``.
        num_steps: Euler steps of the flow (10 in openpi).
        seed: seeds the sampling noise, so the same observations give the same actions.
        device: torch device; default CUDA when available, else CPU.
    """

    def __init__(
        self, model, config_type, norm_stats, tokenizer, *, num_steps: int = 10, seed: int = 0, device=None
    ):
        import torch

        from data_adapters.transforms import InputTransform, OutputTransform

        if num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {num_steps}")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = model.to(self.device).eval()
        self.config_type = config_type
        self.norm_stats = norm_stats
        self.num_steps = num_steps
        self.seed = seed
        self.input_transform = InputTransform(config_type, norm_stats, tokenizer, train=False, augment=False)
        self.output_transform = OutputTransform(config_type, norm_stats)

    @classmethod
    def from_export(cls, folder: str | os.PathLike, **kwargs) -> Policy:
        """Load a training export folder (weights, norm_stats.json, config_type.json, tokenizer.model)."""
        from data_adapters.config_types import ConfigType
        from data_adapters.normalization import NormStats
        from data_adapters.tokenizer import PromptTokenizer
        from model_zoo.checkpoint import load_model

        folder = Path(folder)
        for name in ("config_type.json", "norm_stats.json", "tokenizer.model", "model.safetensors"):
            if not (folder / name).is_file():
                raise FileNotFoundError(f"{folder} is not a vla-sft export: {name} is missing")
        config_type = ConfigType.from_dict(json.loads((folder / "config_type.json").read_text()))
        tokenizer = PromptTokenizer(folder / "tokenizer.model", config_type.max_token_len)
        return cls(
            load_model(folder), config_type, NormStats.load(folder / "norm_stats.json"), tokenizer, **kwargs
        )

    @property
    def camera_keys(self) -> tuple[str, ...]:
        return self.config_type.camera_keys

    def _check(self, obs: Mapping[str, Any], index: int) -> dict[str, Any]:
        cfg = self.config_type
        where = f"observation {index}"
        if not isinstance(obs, Mapping):
            raise ValueError(
                f"{where}: expected a dict with 'images', 'state' and 'task', got {type(obs).__name__}"
            )
        images = obs.get("images") or {}
        for key in self.camera_keys:
            if key not in images:
                raise ValueError(
                    f"{where} is missing camera {key!r} (config type {cfg.name!r} expects cameras "
                    f"{list(self.camera_keys)}, got {sorted(images)})"
                )
            image = np.asarray(images[key])
            if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
                raise ValueError(
                    f"{where}: camera {key!r} must be uint8 [height, width, 3], got {image.dtype} {list(image.shape)}"
                )
        if "state" not in obs:
            raise ValueError(
                f"{where} has no 'state' (config type {cfg.name!r} expects {cfg.state_dim} values)"
            )
        state = np.asarray(obs["state"], dtype=np.float32).reshape(-1)
        if state.shape[0] != cfg.state_dim:
            raise ValueError(
                f"{where}: state has {state.shape[0]} values, config type {cfg.name!r} expects {cfg.state_dim}"
            )
        return {
            "images": {key: np.asarray(images[key]) for key in self.camera_keys},
            "state": state,
            "task": str(obs.get("task", "")),
            "episode_index": obs.get("episode_index"),
            "frame_index": obs.get("frame_index"),
        }

    def predict(
        self, observations: Mapping[str, Any] | Sequence[Mapping[str, Any]], noise=None
    ) -> np.ndarray:
        """Action chunks in robot units: [B, H, action_dim] for a list, [H, action_dim] for one dict.

        ``noise`` ([B, H, 32], the flow's starting point) makes a sample independent of its batch;
        by default it is drawn from ``seed`` for the whole call.
        """
        import torch

        from data_adapters.transforms import collate

        single = isinstance(observations, Mapping)
        obs_list = [observations] if single else list(observations)
        if not obs_list:
            raise ValueError("predict needs at least one observation")
        raws = [self._check(obs, i) for i, obs in enumerate(obs_list)]
        batch = collate([self.input_transform(raw) for raw in raws])
        batch = to_device(batch, self.device)
        cfg = self.model.config
        shape = (len(raws), cfg.action_horizon, cfg.action_dim)
        if noise is None:
            noise = torch.randn(shape, generator=torch.Generator().manual_seed(self.seed))
        noise = torch.as_tensor(noise, dtype=torch.float32).reshape(shape).to(self.device)
        with torch.no_grad():
            model_actions = self.model.sample_actions(batch, num_steps=self.num_steps, noise=noise)
        states = np.stack([raw["state"] for raw in raws])
        actions = self.output_transform(model_actions.float().cpu().numpy(), states)
        return actions[0] if single else actions


def to_device(batch: Any, device, non_blocking: bool = False) -> Any:
    """A (nested) dict of tensors moved to ``device``; anything else (strings, numbers) as it is."""
    import torch

    if isinstance(batch, Mapping):
        return {key: to_device(value, device, non_blocking) for key, value in batch.items()}
    return batch.to(device, non_blocking=non_blocking) if isinstance(batch, torch.Tensor) else batch
