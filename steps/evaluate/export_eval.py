"""Evaluate an exported model: held-out episodes offline, and closed-loop in a simulator where one exists.

``evaluate_export`` loads the export folder as the inference policy (``steps.policy.Policy``, the same
code path as the registered MLflow model) and runs

- ``steps.evaluate.offline.evaluate_offline`` on the held-out episodes: the flow-matching ``val_loss``
  (same fixed noise and time per frame as training's validation, so it is comparable with
  ``val/loss``), and action-chunk errors after sampling in robot units (``val_action_mse`` / ``_mae``,
  per dimension, per horizon step, first step), with plots;
- for config types that declare Meta-World (``simulator: metaworld``), ``steps.evaluate.closed_loop.evaluate_metaworld``:
  success rates per task (keyed by environment name) and per difficulty, plus rollout media.

Only the export folder and the dataset are read, so evaluation needs nothing from the training process.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from steps.evaluate.settings import SIM_EPISODES, SIM_MAX_STEPS


@dataclass
class EvalResult:
    metrics: dict[str, float]
    num_samples: int
    episodes: list[int]
    seconds: float
    # name -> local file (PNG plots, rollout GIFs / strips), logged to MLflow and shown in the card.
    artifacts: dict[str, str] = field(default_factory=dict)
    details: dict = field(default_factory=dict)


def sim_tasks_for(dataset_root: str | os.PathLike, tasks: Sequence[str] | None) -> list[str]:
    """Tasks to roll out: the given ones, else those a generated dataset was made from, else all MT50."""
    if tasks:
        return list(tasks)
    from steps.sim.metaworld.demonstrations import read_generation_meta
    from steps.sim.metaworld.tasks import TASKS

    try:
        return list(read_generation_meta(dataset_root)["spec"]["tasks"])
    except FileNotFoundError:
        return list(TASKS)


def _image_resolution(dataset_root: str | os.PathLike, camera_key: str) -> int:
    from data_adapters.lerobot_format import INFO_PATH

    # info.json alone: read_meta would also parse every episode's metadata for this one number.
    info = json.loads((Path(dataset_root) / INFO_PATH).read_text())
    return int(info["features"][camera_key]["shape"][0])


def evaluate_export(
    export_dir: str | os.PathLike,
    dataset_root: str | os.PathLike,
    episodes: Sequence[int],
    *,
    max_samples: int = 256,
    batch_size: int = 8,
    seed: int = 0,
    device: str = "cpu",
    out_dir: str | os.PathLike | None = None,
    sim_episodes: int = SIM_EPISODES,
    sim_max_steps: int = SIM_MAX_STEPS,
    sim_tasks: Sequence[str] | None = None,
    progress_every_s: float | None = None,
) -> EvalResult:
    """Offline metrics on ``episodes`` (at most ``max_samples`` frames) and, for simulator config types,
    ``sim_episodes`` closed-loop episodes per task (0 turns the simulator off).

    Progress: a line at most every ``progress_every_s`` seconds of offline evaluation (default 10 s,
    ``steps.progress``) and one line per closed-loop episode.
    """
    from steps.evaluate.offline import evaluate_offline
    from steps.policy import Policy

    started = time.perf_counter()
    export_dir = Path(export_dir)
    episodes = [int(e) for e in episodes]
    if not episodes:
        raise ValueError("episodes: no held-out episodes to evaluate on (raise --eval_episodes)")
    if max_samples <= 0 or batch_size <= 0:
        raise ValueError(f"max_samples / batch_size: must be > 0, got {max_samples} / {batch_size}")
    if sim_episodes < 0 or sim_max_steps <= 0:
        raise ValueError(
            f"sim_episodes / sim_max_steps: must be >= 0 / > 0, got {sim_episodes} / {sim_max_steps}"
        )
    train_config = json.loads((export_dir / "train_config.json").read_text())
    out = Path(out_dir) if out_dir is not None else None

    policy = Policy.from_export(export_dir, device=device, seed=seed)
    offline = evaluate_offline(
        policy, dataset_root, episodes, num_samples=max_samples, batch_size=batch_size,
        seed=int(train_config.get("seed", seed)), out_dir=out,
        loss_reduction=train_config.get("loss_reduction"), mask_padded=train_config.get("mask_padded_actions"),
        progress_every_s=progress_every_s,
    )  # fmt: skip
    metrics = dict(offline.metrics)
    artifacts = {f"plots/{Path(path).name}": str(path) for path in offline.plots.values()}
    details: dict = {"offline_seconds": offline.seconds}

    ct = policy.config_type
    if ct.simulator == "metaworld" and sim_episodes > 0:
        from steps.evaluate.closed_loop import evaluate_metaworld

        tasks = sim_tasks_for(dataset_root, sim_tasks)
        sim = evaluate_metaworld(
            policy.predict, tasks, episodes_per_task=sim_episodes, max_steps=sim_max_steps,
            replan_every=ct.action_horizon, resolution=_image_resolution(dataset_root, ct.camera_keys[0]),
            out_dir=out / "rollouts" if out is not None else None,
        )  # fmt: skip
        metrics.update(sim.metrics())
        artifacts.update({f"rollouts/{Path(p).name}": str(p) for p in sim.media})
        details.update(
            sim_tasks=tasks, sim_per_task=dict(sim.per_task), sim_per_difficulty=dict(sim.per_difficulty)
        )
    return EvalResult(
        metrics=metrics,
        num_samples=int(metrics.get("num_samples", len(offline.samples))),
        episodes=offline.episodes,
        seconds=time.perf_counter() - started,
        artifacts=artifacts,
        details=details,
    )
