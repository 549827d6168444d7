"""Raw reader item -> model item (InputTransform), batching (collate), and model actions -> robot
actions (OutputTransform).

Input order (openpi): repack (the reader already concatenated state_keys / action_keys; cameras are
mapped onto slots here) -> camera slots and masks -> delta actions -> normalize -> resize-with-pad
(+ augmentation when training) -> [-1, 1] -> tokenize -> pad state / actions to 32.
Output order: slice to the robot's action dims -> unnormalize -> add the state back on delta dims.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from data_adapters.config_types import IMAGE_SLOTS, MODEL_ACTION_DIM, ConfigType
from data_adapters.image_ops import MODEL_IMAGE_SIZE, missing_image, prepare_image
from data_adapters.normalization import NormStats, normalize, unnormalize
from data_adapters.tokenizer import PromptTokenizer


def _where(raw: Mapping[str, Any]) -> str:
    return f"episode_index={raw.get('episode_index')}, frame_index={raw.get('frame_index')}"


def _vector(raw: Mapping[str, Any], key: str, shape: tuple[int, ...]) -> np.ndarray:
    value = np.asarray(raw[key], dtype=np.float32)
    if value.shape != shape:
        raise ValueError(f"{key} has shape {value.shape}, expected {shape} ({_where(raw)})")
    if not np.all(np.isfinite(value)):
        raise ValueError(f"{key} has NaN or inf values ({_where(raw)})")
    return value


def pad_last_dim(x: np.ndarray, size: int = MODEL_ACTION_DIM) -> np.ndarray:
    """Zero-pad the last dim to `size`."""
    pad = [(0, 0)] * (x.ndim - 1) + [(0, size - x.shape[-1])]
    return np.pad(x, pad)


class InputTransform:
    """Turns one raw reader item into one model item (unbatched torch tensors).

    Raw item (reader, robot units): "state" float[Ds], optional "actions" float[H, Da] and
    "action_is_pad" bool[H] (absent at inference), "images" {dataset camera key: uint8[h, w, 3]},
    "task" str, "episode_index", "frame_index".
    Model item: "images" {slot: float32[3, 224, 224] in [-1, 1]}, "image_masks" {slot: bool tensor},
    "state" float32[32], "tokens" int64[L], "token_mask" bool[L], and with actions "actions"
    float32[H, 32], "action_is_pad" bool[H].

    Args:
        cfg: the config type (key mapping, delta mask, normalization mode, prompt format).
        norm_stats: statistics at the robot's native dims.
        tokenizer: PromptTokenizer with max_len == cfg.max_token_len.
        train: training mode (augmentation is only applied when train and augment).
        augment: openpi's image augmentation.
        seed: seeds the augmentation generator (per DataLoader worker it is mixed with the worker's
            seed, so workers and epochs differ but runs repeat); None uses torch's global RNG.
    """

    def __init__(
        self,
        cfg: ConfigType,
        norm_stats: NormStats,
        tokenizer: PromptTokenizer,
        *,
        train: bool,
        augment: bool = False,
        seed: int | None = None,
    ) -> None:
        for name, stats, dim in (
            ("state", norm_stats.state, cfg.state_dim),
            ("actions", norm_stats.actions, cfg.action_dim),
        ):
            if stats.dim != dim:
                raise ValueError(
                    f"norm stats for {name} have {stats.dim} dims but config type {cfg.name!r} "
                    f"has {dim}; recompute the statistics for this config type"
                )
        if tokenizer.max_len != cfg.max_token_len:
            raise ValueError(
                f"tokenizer max_len {tokenizer.max_len} != {cfg.name!r} max_token_len {cfg.max_token_len}"
            )
        self.cfg = cfg
        self.norm_stats = norm_stats
        self.tokenizer = tokenizer
        self.augment = bool(train and augment)
        self.seed = seed
        self._delta_dims = np.asarray(cfg.delta_dims, dtype=np.int64)
        self._generator: torch.Generator | None = None
        self._generator_key: object = None

    def _rng(self) -> torch.Generator | None:
        if self.seed is None:
            return None
        info = torch.utils.data.get_worker_info()
        # Main process: key 0; DataLoader worker: its seed (differs per worker and per epoch, and
        # follows torch.manual_seed in the main process).
        key = 0 if info is None else info.seed + 1
        if self._generator is None or key != self._generator_key:
            mixed = np.random.default_rng([self.seed % 2**63, key]).integers(2**62)
            self._generator = torch.Generator().manual_seed(int(mixed))
            self._generator_key = key
        return self._generator

    def _images(self, raw: Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        images, masks = {}, {}
        frames = raw.get("images", {})
        generator = self._rng() if self.augment else None
        for slot in IMAGE_SLOTS:
            keys = self.cfg.cameras[slot]
            if not keys:
                images[slot], masks[slot] = missing_image(MODEL_IMAGE_SIZE), torch.tensor(False)
                continue
            if keys[0] not in frames:
                raise ValueError(
                    f"raw item has no image {keys[0]!r} for slot {slot!r} ({_where(raw)}); "
                    f"it has {sorted(frames)}"
                )
            images[slot] = prepare_image(
                frames[keys[0]],
                key=keys[0],
                augment=self.augment,
                crop_and_rotate=slot not in self.cfg.wrist_slots,
                generator=generator,
            )
            masks[slot] = torch.tensor(True)
        return images, masks

    def __call__(self, raw: Mapping[str, Any]) -> dict[str, Any]:
        cfg, mode = self.cfg, self.cfg.normalization
        state = _vector(raw, "state", (cfg.state_dim,))
        item: dict[str, Any] = {}
        if raw.get("actions") is not None:
            actions = _vector(raw, "actions", (cfg.action_horizon, cfg.action_dim)).copy()
            # Delta dims: the whole chunk relative to the current state.
            actions[:, self._delta_dims] -= state[self._delta_dims]
            actions = normalize(actions, self.norm_stats.actions, mode)
            item["actions"] = torch.from_numpy(pad_last_dim(actions).astype(np.float32))
            is_pad = raw.get("action_is_pad")
            is_pad = np.zeros(cfg.action_horizon, bool) if is_pad is None else np.asarray(is_pad, dtype=bool)
            if is_pad.shape != (cfg.action_horizon,):
                raise ValueError(
                    f"action_is_pad has shape {is_pad.shape}, expected ({cfg.action_horizon},) "
                    f"({_where(raw)})"
                )
            item["action_is_pad"] = torch.from_numpy(is_pad.copy())
        state = normalize(state, self.norm_stats.state, mode)
        item["images"], item["image_masks"] = self._images(raw)
        tokens, token_mask = self.tokenizer(str(raw.get("task", "")), state if cfg.discrete_state else None)
        item["tokens"], item["token_mask"] = torch.from_numpy(tokens), torch.from_numpy(token_mask)
        item["state"] = torch.from_numpy(pad_last_dim(state).astype(np.float32))
        return item


def collate(items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Stack model items into the model-input batch (the contract documented on ``Pi0Model``)."""
    if not items:
        raise ValueError("collate needs at least one item")
    batch: dict[str, Any] = {}
    for key, value in items[0].items():
        if isinstance(value, Mapping):
            batch[key] = {slot: torch.stack([item[key][slot] for item in items]) for slot in value}
        else:
            batch[key] = torch.stack([item[key] for item in items])
    return batch


class OutputTransform:
    """Model actions [..., H, 32] (normalized) -> robot actions [..., H, Da] in robot units.

    `raw_state` is the unnormalized robot state [..., Ds] the chunk was predicted from (needed to
    undo delta dims). numpy in -> numpy out; torch in -> torch out.
    """

    def __init__(self, cfg: ConfigType, norm_stats: NormStats) -> None:
        if norm_stats.actions.dim != cfg.action_dim:
            raise ValueError(
                f"norm stats for actions have {norm_stats.actions.dim} dims but config type "
                f"{cfg.name!r} has {cfg.action_dim}"
            )
        self.cfg = cfg
        self.norm_stats = norm_stats

    def __call__(self, model_actions: Any, raw_state: Any) -> Any:
        cfg = self.cfg
        actions = unnormalize(
            model_actions[..., : cfg.action_dim], self.norm_stats.actions, cfg.normalization
        )
        dims = list(cfg.delta_dims)
        if not dims:
            return actions
        if isinstance(actions, np.ndarray):
            actions = actions.copy()
            actions[..., dims] += np.asarray(raw_state, dtype=actions.dtype)[..., None, dims]
            return actions
        state = torch.as_tensor(raw_state, dtype=actions.dtype, device=actions.device)
        offset = torch.zeros_like(actions[..., :1, :])
        offset[..., dims] = state[..., None, dims]
        return actions + offset
