"""Offline evaluation of an inference policy on held-out episodes of a LeRobot dataset.

``evaluate_offline(policy, dataset_root, episodes)`` picks frames of the held-out episodes, asks the
policy (``steps.policy.Policy``: the same transforms as training and as the registered model) for an
action chunk at each, and compares it with the dataset's chunk in robot units:

- ``val_action_mse`` / ``val_action_mae``: over every real (not padded) chunk step and action dim;
- ``val_first_step_mse`` / ``val_first_step_mae``: the step a robot executes first (never padded);
- ``val_action_mse/dim_{i}``: per action dim over real steps; ``val_action_mse/step_{k}`` and
  ``val_action_mae/step_{k}``: per chunk step (a step that is padded in every sample has no value and
  no key);
- ``val_loss`` (+ ``val_loss_robot_dims``): the flow-matching loss with the noise and time that
  training's validation draws for the same frame and seed (``steps.train.data_loader.ValSamples``), reduced
  like the trainer (``steps.train.loss.loss_weights``), so it is the same estimator as ``val/loss``;
- ``num_samples``.

Chunk steps past an episode's end repeat its last action in the dataset (``action_is_pad``); they are
left out of every action metric.

Sampling noise: ``Policy.predict`` draws one noise tensor per call from the policy's seed, so a frame's
noise depends on its position within the batch. The metrics are therefore deterministic for a given
``(policy.seed, seed, num_samples, batch_size)``; a different ``batch_size`` gives a statistically
equivalent but not identical number.

torch is imported lazily (the flow imports ``steps`` modules at its top level).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from steps.policy import to_device

# Keys of a reader item the policy may see; everything else (actions, padding) is ground truth.
_OBSERVATION_KEYS = ("images", "state", "task", "episode_index", "frame_index")


@dataclass
class OfflineEvalResult:
    """What ``evaluate_offline`` measured.

    Attributes:
        metrics: MLflow-ready ``{name: float}`` (see the module docstring).
        plots: ``{"trajectories" | "error_by_step": PNG path}`` (empty without ``out_dir``).
        episodes: the held-out episodes evaluated on (sorted).
        samples: ``(episode_index, frame)`` of each evaluated frame (``frame`` counts from the episode start).
        predictions, ground_truth: float32 [N, H, action_dim] action chunks in robot units.
        action_is_pad: bool [N, H], True where the ground-truth step lies past the episode end.
        seconds: wall time.
    """

    metrics: dict[str, float]
    plots: dict[str, Path]
    episodes: list[int]
    samples: list[tuple[int, int]]
    predictions: np.ndarray
    ground_truth: np.ndarray
    action_is_pad: np.ndarray
    seconds: float


def select_frames(lengths: Mapping[int, int], num_samples: int, seed: int) -> list[tuple[int, int]]:
    """``num_samples`` distinct ``(episode, frame)`` pairs spread evenly over the episodes.

    Every episode gets an equal share (an episode shorter than its share gives the rest to the others),
    frames within an episode are drawn uniformly without replacement. Deterministic given ``seed``;
    all frames when ``num_samples`` is at least the total. Sorted by episode, then frame.
    """
    if num_samples <= 0:
        raise ValueError(f"num_samples must be > 0, got {num_samples}")
    rng = np.random.default_rng([seed, 0x0FF])
    episodes = sorted(lengths)
    quota = dict.fromkeys(episodes, 0)
    remaining = min(num_samples, sum(lengths.values()))
    while remaining > 0:
        open_eps = [e for e in episodes if quota[e] < lengths[e]]
        share, extra = divmod(remaining, len(open_eps))
        # Which episodes get one more than the share is random, so small budgets do not always favour
        # the lowest episode indices.
        lucky = set(rng.permutation(open_eps)[:extra].tolist())
        for e in open_eps:
            take = min(share + (e in lucky), lengths[e] - quota[e])
            quota[e] += take
            remaining -= take
    picked = []
    for e in episodes:
        frames = np.sort(rng.choice(lengths[e], size=quota[e], replace=False)) if quota[e] else []
        picked.extend((e, int(f)) for f in frames)
    return picked


def action_error_metrics(
    predictions: np.ndarray, ground_truth: np.ndarray, action_is_pad: np.ndarray, *, prefix: str = "val_"
) -> dict[str, float]:
    """MSE/MAE of predicted chunks [N, H, D] against ground truth, over real (not padded) steps only."""
    pred = np.asarray(predictions, dtype=np.float64)
    true = np.asarray(ground_truth, dtype=np.float64)
    real = ~np.asarray(action_is_pad, dtype=bool)
    if pred.shape != true.shape or pred.ndim != 3 or real.shape != pred.shape[:2]:
        raise ValueError(
            f"predictions {list(pred.shape)}, ground truth {list(true.shape)} and action_is_pad "
            f"{list(real.shape)} must be [N, H, D], [N, H, D] and [N, H]"
        )
    err = pred - true
    sq, ab = err**2, np.abs(err)
    mask = real[..., None].astype(np.float64)
    dims = pred.shape[2]
    metrics = {
        f"{prefix}action_mse": float((sq * mask).sum() / (mask.sum() * dims)),
        f"{prefix}action_mae": float((ab * mask).sum() / (mask.sum() * dims)),
        # Step 0 is the current frame, which is always inside the episode.
        f"{prefix}first_step_mse": float(sq[:, 0].mean()),
        f"{prefix}first_step_mae": float(ab[:, 0].mean()),
    }
    per_dim = (sq * mask).sum(axis=(0, 1)) / mask.sum()
    metrics.update({f"{prefix}action_mse/dim_{i}": float(v) for i, v in enumerate(per_dim)})
    for k in range(pred.shape[1]):
        n = int(real[:, k].sum())
        if n:
            metrics[f"{prefix}action_mse/step_{k}"] = float(sq[real[:, k], k].mean())
            metrics[f"{prefix}action_mae/step_{k}"] = float(ab[real[:, k], k].mean())
    return metrics


def evaluate_offline(
    policy,
    dataset_root: str | os.PathLike,
    episodes: Sequence[int],
    *,
    num_samples: int = 64,
    seed: int = 0,
    batch_size: int = 8,
    loss_fn: Callable | None = None,
    out_dir: str | os.PathLike | None = None,
    val_loss: bool = True,
    loss_reduction: str | None = None,
    mask_padded: bool | None = None,
    plot_episodes: int = 3,
    progress_every_s: float | None = None,
    clock: Callable[[], float] | None = None,
) -> OfflineEvalResult:
    """Evaluate ``policy`` on ``num_samples`` frames of the held-out ``episodes``.

    Args:
        policy: a ``steps.policy.Policy`` (its config type names the dataset keys and horizon).
        dataset_root: LeRobot dataset folder.
        episodes: held-out episode indices.
        num_samples: frames to evaluate (all frames of the episodes when there are fewer).
        seed: picks the frames; seeds the flow-matching noise and time of ``val_loss``.
        batch_size: frames per ``policy.predict`` call (see the module docstring on noise).
        loss_fn: per-element flow-matching loss ``(batch, noise, time) -> [B, H, 32]``; default
            ``policy.model.compute_loss``.
        out_dir: where to write the PNG plots (none when None).
        val_loss: compute ``val_loss`` (one extra forward pass per batch).
        loss_reduction, mask_padded: the trainer's loss reduction (default: ``TrainConfig``'s defaults,
            ``"all_dims"`` without masking padded steps, openpi's loss).
        plot_episodes: episodes shown in the trajectory plot (those with the most evaluated frames).
        progress_every_s, clock: a progress line at most this often (default ``steps.progress``'s 10 s;
            0: after every batch), timed by ``clock`` (default ``time.monotonic``), and a closing line.

    Raises:
        ValueError: no episodes, episodes not in the dataset (named), num_samples / batch_size <= 0,
            or dataset keys the config type needs are missing (``DatasetFormatError``).
    """
    from data_adapters.lerobot_format import read_meta
    from data_adapters.lerobot_reader import LeRobotFrames

    started = time.perf_counter()
    if num_samples <= 0:
        raise ValueError(f"num_samples must be > 0, got {num_samples}")
    if batch_size <= 0:
        raise ValueError(f"batch_size must be > 0, got {batch_size}")
    episodes = sorted({int(e) for e in episodes})
    if not episodes:
        raise ValueError("episodes: no held-out episodes to evaluate on")
    meta = read_meta(dataset_root)
    missing = [e for e in episodes if e not in meta.episodes]
    if missing:
        known = sorted(meta.episodes)
        raise ValueError(
            f"episodes {missing} are not in dataset {meta.root} (it has {len(known)} episodes, "
            f"indices {known[0]}..{known[-1]})"
        )
    ct = policy.config_type
    frames = LeRobotFrames(dataset_root, state_keys=ct.state_keys, action_keys=ct.action_keys,
                           camera_keys=ct.camera_keys, horizon=ct.action_horizon, episodes=episodes)  # fmt: skip
    lengths = frames.episode_lengths
    starts = dict(zip(lengths, np.cumsum([0, *lengths.values()]).tolist()))
    samples = select_frames(lengths, num_samples, seed)
    flat_indices = [starts[e] + f for e, f in samples]

    loss = _LossAccumulator(policy, seed, loss_fn, loss_reduction, mask_padded) if val_loss else None
    progress = _progress("offline eval", len(flat_indices), "frames", progress_every_s, clock)
    preds, truth, pads = [], [], []
    for first in range(0, len(flat_indices), batch_size):
        chunk = flat_indices[first : first + batch_size]
        raws = {i: frames[i] for i in chunk}
        observations = [{k: raws[i][k] for k in _OBSERVATION_KEYS} for i in chunk]
        preds.append(np.asarray(policy.predict(observations), dtype=np.float32))
        truth.append(np.stack([raws[i]["actions"] for i in chunk]).astype(np.float32))
        pads.append(np.stack([raws[i]["action_is_pad"] for i in chunk]))
        if loss is not None:
            loss.add(raws, chunk)
        progress.advance(len(chunk))
    predictions, ground_truth, action_is_pad = (np.concatenate(x) for x in (preds, truth, pads))

    metrics = action_error_metrics(predictions, ground_truth, action_is_pad)
    if loss is not None:
        metrics.update(loss.metrics())
    metrics["num_samples"] = float(len(samples))
    progress.finish(f"{len(episodes)} held-out episodes")

    plots: dict[str, Path] = {}
    if out_dir is not None:
        plots = _write_plots(Path(out_dir), meta, ct, samples, predictions, action_is_pad, metrics,
                             plot_episodes=plot_episodes)  # fmt: skip
    return OfflineEvalResult(
        metrics=metrics, plots=plots, episodes=episodes, samples=samples, predictions=predictions,
        ground_truth=ground_truth, action_is_pad=action_is_pad, seconds=time.perf_counter() - started,
    )  # fmt: skip


def _progress(label: str, total: int, unit: str, every_s: float | None, clock):
    from steps.progress import DEFAULT_EVERY_S, Progress

    every = DEFAULT_EVERY_S if every_s is None else every_s
    return Progress(label, total, unit=unit, every_s=every, **({"clock": clock} if clock else {}))


class _LossAccumulator:
    """Flow-matching validation loss over the evaluated frames, reduced like the trainer's validation."""

    def __init__(self, policy, seed: int, loss_fn, reduction: str | None, mask_padded: bool | None):
        from steps.train.config import LOSS_REDUCTIONS, TrainConfig

        defaults = TrainConfig.__dataclass_fields__
        self.reduction = reduction or defaults["loss_reduction"].default
        self.mask_padded = defaults["mask_padded_actions"].default if mask_padded is None else mask_padded
        if self.reduction not in LOSS_REDUCTIONS:
            raise ValueError(f"loss_reduction must be one of {list(LOSS_REDUCTIONS)}, got {self.reduction!r}")
        self.policy = policy
        self.seed = seed
        self.loss_fn = loss_fn or policy.model.compute_loss
        self.totals = {"val_loss": [0.0, 0.0], "val_loss_robot_dims": [0.0, 0.0]}

    def add(self, raws: Mapping[int, dict], indices: Sequence[int]) -> None:
        import torch

        from data_adapters.transforms import collate
        from steps.train.data_loader import ValSamples
        from steps.train.loss import loss_weights

        policy, ct = self.policy, self.policy.config_type
        # The policy's own input transform (train=False, no augmentation) keeps the actions of a raw
        # item; ValSamples adds the noise and time training's validation uses for this frame and seed.
        # It reads ``frames[index]``, so the already decoded items stand in for the dataset.
        samples = ValSamples(raws, policy.input_transform, indices, seed=self.seed, horizon=ct.action_horizon,
                             action_dim=policy.model.config.action_dim)  # fmt: skip
        batch = collate([samples[j] for j in range(len(samples))])
        noise, t = batch.pop("noise"), batch.pop("time")
        batch.pop("position")
        batch = to_device(batch, policy.device)
        with torch.no_grad():
            per_element = self.loss_fn(batch, noise.to(policy.device), t.to(policy.device)).float()
        for name, reduction in (("val_loss", self.reduction), ("val_loss_robot_dims", "real_dims")):
            w = loss_weights(batch, per_element.shape, action_dim=ct.action_dim, reduction=reduction,
                             mask_padded=self.mask_padded)  # fmt: skip
            self.totals[name][0] += float((per_element * w).sum())
            self.totals[name][1] += float(w.sum())

    def metrics(self) -> dict[str, float]:
        return {name: total / count for name, (total, count) in self.totals.items() if count}


def _write_plots(out_dir: Path, meta, ct, samples, predictions, action_is_pad, metrics, *, plot_episodes):
    from data_adapters.lerobot_reader import read_numeric
    from steps.evaluate import plots as eval_plots

    out_dir.mkdir(parents=True, exist_ok=True)
    counts: dict[int, int] = {}
    for e, _ in samples:
        counts[e] = counts.get(e, 0) + 1
    shown = sorted(sorted(counts, key=lambda e: (-counts[e], e))[: max(plot_episodes, 1)])
    truth = read_numeric(meta, ct.action_keys, episodes=shown)
    chunks: dict[int, list[tuple[int, np.ndarray, np.ndarray]]] = {e: [] for e in shown}
    for (e, f), pred, pad in zip(samples, predictions, action_is_pad):
        if e in chunks:
            chunks[e].append((f, pred, pad))
    horizon = predictions.shape[1]
    steps = range(horizon)
    return {
        "trajectories": eval_plots.plot_action_trajectories(
            out_dir / "action_trajectories.png", truth, chunks, dim_names=_action_dim_names(meta, ct)
        ),
        "error_by_step": eval_plots.plot_error_by_step(
            out_dir / "error_by_step.png",
            step_mse=[metrics.get(f"val_action_mse/step_{k}", np.nan) for k in steps],
            step_mae=[metrics.get(f"val_action_mae/step_{k}", np.nan) for k in steps],
            dim_mse=[metrics[f"val_action_mse/dim_{i}"] for i in range(predictions.shape[2])],
            dim_names=_action_dim_names(meta, ct),
        ),
    }


def _action_dim_names(meta, ct) -> list[str]:
    """Names of the concatenated action dims: the dataset's ``names`` when it lists them, else key[i]."""
    names: list[str] = []
    for key in ct.action_keys:
        listed = meta.features[key].get("names")
        if isinstance(listed, Mapping):  # LeRobot sometimes nests them: {"motors": [...]}
            listed = next(iter(listed.values()), None) if len(listed) == 1 else None
        size = meta.feature_dim(key)
        if (
            isinstance(listed, list | tuple)
            and len(listed) == size
            and all(isinstance(n, str) for n in listed)
        ):
            names.extend(listed)
        else:
            names.extend(f"{key}[{i}]" for i in range(size))
    return names
