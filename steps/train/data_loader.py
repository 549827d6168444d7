"""Train / validation DataLoaders with a deterministic, resumable sample order.

The data order is a pure function of ``(seed, position)``: position ``p`` of the global sample stream
falls in epoch ``p // n`` and picks ``perm_epoch[p % n]`` where ``perm_epoch`` is a permutation of the
``n`` training frames seeded by ``(seed, epoch)``. The global batch of optimizer step ``s`` is positions
``[s*G, (s+1)*G)``; rank ``r`` of ``W`` takes the ``r``-th contiguous ``G/W`` slice and cuts it into
micro-batches. So

- resuming needs only the number of samples seen (saved in the checkpoint), nothing of the loader;
- the samples of a global batch do not depend on world size or micro batch, and neither do the
  flow-matching noise and time, which are drawn per sample from ``(seed, position)`` here rather than
  inside the model: 1 rank x 8 and 2 ranks x 4 or 4 x 2 accumulation compute the same update;
- image augmentation is keyed by the position too, so a resumed run sees the same pixels.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from data_adapters.transforms import InputTransform, collate

# Mixed into per-sample seeds so train noise, val noise and augmentation streams never coincide.
_NOISE_STREAM, _AUG_STREAM, _VAL_STREAM = 1, 2, 3
# openpi's flow-matching time: t = Beta(1.5, 1) * 0.999 + 0.001 (t = 1 is pure noise).
TIME_BETA = (1.5, 1.0)


class ShuffledStream:
    """Maps a global stream position to a dataset index (a fresh permutation every epoch)."""

    def __init__(self, num_samples: int, seed: int) -> None:
        if num_samples <= 0:
            raise ValueError("train_episodes: the training split has no frames")
        self.num_samples = num_samples
        self.seed = seed
        self._epoch = -1
        self._perm: np.ndarray | None = None

    def index(self, position: int) -> int:
        epoch, offset = divmod(position, self.num_samples)
        if epoch != self._epoch:
            rng = np.random.default_rng([self.seed, epoch])
            self._perm = rng.permutation(self.num_samples)
            self._epoch = epoch
        return int(self._perm[offset])


class ResumableSampler(torch.utils.data.Sampler[int]):
    """Endless stream of this rank's global positions, starting at ``start_position``.

    ``start_position`` must be a multiple of ``global_batch`` (checkpoints are taken between steps).
    """

    def __init__(self, *, global_batch: int, world_size: int, rank: int, start_position: int = 0) -> None:
        if global_batch % world_size:
            raise ValueError(f"global_batch: {global_batch} is not divisible by world_size {world_size}")
        if start_position % global_batch:
            raise ValueError(
                f"sampler start {start_position} is not a multiple of global_batch {global_batch}"
            )
        self.global_batch = global_batch
        self.per_rank = global_batch // world_size
        self.rank = rank
        self.start_position = start_position

    def __iter__(self) -> Iterator[int]:
        base = self.start_position
        while True:
            first = base + self.rank * self.per_rank
            yield from range(first, first + self.per_rank)
            base += self.global_batch


def _sample_noise(
    seed: int, stream: int, key: int, horizon: int, dim: int
) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng([seed, stream, key])
    noise = rng.standard_normal((horizon, dim), dtype=np.float32)
    time = rng.beta(*TIME_BETA) * 0.999 + 0.001
    return torch.from_numpy(noise), torch.tensor(time, dtype=torch.float32)


class _PositionKeyedTransform(InputTransform):
    """InputTransform whose augmentation generator is reseeded for every sample.

    The base class keeps one generator per worker, so after a resume (fresh workers) the pixels
    would differ. Keying it by the sample's stream position makes augmentation part of the
    deterministic data order. (Overrides the base class's private ``_rng`` hook.)
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._sample_generator: torch.Generator | None = None

    def for_sample(self, key: int) -> _PositionKeyedTransform:
        seed = int(np.random.default_rng([self.seed or 0, _AUG_STREAM, key]).integers(2**62))
        self._sample_generator = torch.Generator().manual_seed(seed)
        return self

    def _rng(self) -> torch.Generator | None:
        return self._sample_generator


class TrainSamples(torch.utils.data.Dataset):
    """Global stream position -> model item, plus ``noise`` [H, 32], ``time`` [] and ``position``."""

    def __init__(self, frames, transform: _PositionKeyedTransform, *, seed: int, horizon: int,
                 action_dim: int = 32) -> None:  # fmt: skip
        self.frames = frames
        self.transform = transform
        self.stream = ShuffledStream(len(frames), seed)
        self.seed = seed
        self.horizon = horizon
        self.action_dim = action_dim

    def __len__(self) -> int:  # positions are unbounded; DataLoader never asks with our sampler
        return len(self.frames)

    def __getitem__(self, position: int) -> dict[str, Any]:
        raw = self.frames[self.stream.index(position)]
        item = self.transform.for_sample(position)(raw)
        item["noise"], item["time"] = _sample_noise(
            self.seed, _NOISE_STREAM, position, self.horizon, self.action_dim
        )
        item["position"] = torch.tensor(position, dtype=torch.int64)
        return item


class ValSamples(torch.utils.data.Dataset):
    """Fixed subset of validation frames with fixed noise and time (comparable across evaluations)."""

    def __init__(self, frames, transform: InputTransform, indices: Sequence[int], *, seed: int, horizon: int,
                 action_dim: int = 32) -> None:  # fmt: skip
        self.frames = frames
        self.transform = transform
        self.indices = list(indices)
        self.seed = seed
        self.horizon = horizon
        self.action_dim = action_dim

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict[str, Any]:
        index = self.indices[i]
        item = self.transform(self.frames[index])
        item["noise"], item["time"] = _sample_noise(
            self.seed, _VAL_STREAM, index, self.horizon, self.action_dim
        )
        item["position"] = torch.tensor(index, dtype=torch.int64)
        return item


def worker_init(worker_id: int) -> None:
    """One intra-op thread per worker: N workers x all cores threads oversubscribe the CPU."""
    del worker_id
    torch.set_num_threads(1)


def evenly_spaced(n: int, k: int) -> list[int]:
    """``k`` indices spread over ``range(n)`` (all of them when k >= n)."""
    if k >= n:
        return list(range(n))
    return sorted({int(round(x)) for x in np.linspace(0, n - 1, k)})


@dataclass
class Loaders:
    train: torch.utils.data.DataLoader
    val: torch.utils.data.DataLoader | None
    num_train_frames: int
    num_val_frames: int


def build_loaders(
    cfg,
    norm_stats,
    tokenizer,
    *,
    dataset_root: str,
    train_episodes: Sequence[int] | None,
    val_episodes: Sequence[int],
    global_batch: int,
    micro_batch: int,
    world_size: int,
    rank: int,
    start_position: int,
    seed: int,
    augment: bool,
    num_workers: int,
    val_samples: int,
    pin_memory: bool = False,
) -> Loaders:
    """Build the resumable train loader and the (sharded, fixed) validation loader for this rank."""
    from data_adapters.lerobot_reader import LeRobotFrames

    def frames(episodes):
        return LeRobotFrames(dataset_root, state_keys=cfg.state_keys, action_keys=cfg.action_keys,
                             camera_keys=cfg.camera_keys, horizon=cfg.action_horizon, episodes=episodes)  # fmt: skip

    train_frames = frames(None if train_episodes is None else list(train_episodes))
    transform = _PositionKeyedTransform(cfg, norm_stats, tokenizer, train=True, augment=augment, seed=seed)
    train_set = TrainSamples(train_frames, transform, seed=seed, horizon=cfg.action_horizon)
    sampler = ResumableSampler(global_batch=global_batch, world_size=world_size, rank=rank,
                               start_position=start_position)  # fmt: skip
    common = dict(num_workers=num_workers, collate_fn=collate, pin_memory=pin_memory,
                  worker_init_fn=worker_init if num_workers else None)  # fmt: skip
    if num_workers:
        common.update(persistent_workers=True, prefetch_factor=4)
    train = torch.utils.data.DataLoader(train_set, batch_size=micro_batch, sampler=sampler, **common)
    val, n_val = None, 0
    if val_episodes:
        val_frames = frames(list(val_episodes))
        n_val = len(val_frames)
        chosen = evenly_spaced(n_val, val_samples)
        # The same number per rank: FSDP's forward is collective, every rank must run as many batches.
        chosen = chosen[: len(chosen) // world_size * world_size] or chosen[:1] * world_size
        indices = chosen[rank::world_size]
        val_transform = InputTransform(cfg, norm_stats, tokenizer, train=False)
        val_set = ValSamples(val_frames, val_transform, indices, seed=seed, horizon=cfg.action_horizon)
        val_common = {**common, "persistent_workers": False}
        val_common.pop("prefetch_factor", None)
        val = torch.utils.data.DataLoader(val_set, batch_size=micro_batch, shuffle=False, **val_common)
    return Loaders(train=train, val=val, num_train_frames=len(train_frames), num_val_frames=n_val)
