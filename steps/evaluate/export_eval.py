"""Evaluate an exported model: held-out episodes offline, and closed-loop in a simulator where one exists.

``evaluate_export`` loads the export folder as the inference policy (``steps.policy.Policy``, the same
code path as the registered MLflow model) and runs

- ``steps.evaluate.offline.evaluate_offline`` on the held-out episodes: the flow-matching ``val_loss``
  (same fixed noise and time per frame as training's validation, so it is comparable with
  ``val/loss``), and action-chunk errors after sampling in robot units (``val_action_mse`` / ``_mae``,
  per dimension, per horizon step, first step), with plots;
- for config types that declare a simulator (``simulator: metaworld`` or ``libero``),
  ``steps.evaluate.closed_loop.evaluate_closed_loop``: the simulator is checked first (renderer, assets:
  one line naming the fix), then success rates per task and per group (difficulty / suite), episode
  lengths and seeds, rollout GIFs and a PNG strip.

Only the export folder and the dataset are read, so evaluation needs nothing from the training process.
"""

from __future__ import annotations

import dataclasses
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


def sim_tasks_for(
    dataset_root: str | os.PathLike, tasks: Sequence[str] | None, simulator: str = "metaworld",
    suite: str | None = None,
) -> list[str]:  # fmt: skip
    """Tasks to roll out: the given ones, else those a generated dataset was made from, else the benchmark's
    (all of MT50; LIBERO: every task of ``suite``; ManiSkill: PickCube-v1)."""
    if simulator == "libero":
        from steps.sim.libero import suites
        from steps.sim.libero.demonstrations import generated_tasks

        suite = suite or suites.DEFAULT_SUITE
        if tasks:
            return list(suites.check_task_names(tasks, suite))
        # A generated dataset's tasks when they are of the suite asked for (the demo's), else the whole suite.
        generated = [t for t in generated_tasks(dataset_root) or [] if suites.suite_of(t) == suite]
        return generated or list(suites.SUITES[suites.check_suite(suite)])
    if simulator == "maniskill":
        from steps.sim.maniskill.demonstrations import generated_tasks
        from steps.sim.maniskill.tasks import DEFAULT_TASK, check_task_names

        return list(check_task_names(tasks)) if tasks else generated_tasks(dataset_root) or [DEFAULT_TASK]
    if tasks:
        return list(tasks)
    from steps.sim.metaworld.demonstrations import read_generation_meta
    from steps.sim.metaworld.tasks import TASKS

    try:
        return list(read_generation_meta(dataset_root)["spec"]["tasks"])
    except FileNotFoundError:
        return list(TASKS)


def sim_options_for(dataset_root: str | os.PathLike, simulator: str) -> dict:
    """Simulator options a dataset fixes: ManiSkill's control mode (the one its actions were recorded in)."""
    if simulator != "maniskill":
        return {}
    from steps.sim.maniskill.demonstrations import dataset_control_mode

    return {"control_mode": dataset_control_mode(dataset_root)}


# Default cap on simulator processes: a LIBERO task holds ~1.8 GB (scene textures, renderer buffers).
MAX_DEFAULT_SIM_WORKERS = 16


def sim_workers_for(workers: int | None, episodes: int) -> int:
    """Simulator processes: as asked, else one per usable core, at most one per episode and
    MAX_DEFAULT_SIM_WORKERS (0 for a single episode: a worker would only add its start-up)."""
    if workers is not None:
        return workers
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return 0 if episodes <= 1 else min(cores, episodes, MAX_DEFAULT_SIM_WORKERS)


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
    sim_max_steps: int | None = SIM_MAX_STEPS,
    sim_tasks: Sequence[str] | None = None,
    sim_suite: str | None = None,
    sim_workers: int | None = None,
    progress_every_s: float | None = None,
) -> EvalResult:
    """Offline metrics on ``episodes`` (at most ``max_samples`` frames) and, for simulator config types,
    ``sim_episodes`` closed-loop episodes per task (0 turns the simulator off), at most ``sim_max_steps``
    steps each (None: the benchmark's limit), in ``sim_workers`` simulator processes (None: one per core).

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
    if sim_episodes < 0 or (sim_max_steps is not None and sim_max_steps <= 0):
        raise ValueError(
            f"sim_episodes / sim_max_steps: must be >= 0 / > 0, got {sim_episodes} / {sim_max_steps}"
        )
    train_config = json.loads((export_dir / "train_config.json").read_text())
    out = Path(out_dir) if out_dir is not None else None

    policy = Policy.from_export(export_dir, device=device, seed=seed)
    ct = policy.config_type
    if ct.simulator and sim_episodes > 0:
        from steps.sim.base import simulator_class

        # Renderer, package and assets first: one line naming the fix, before minutes of offline evaluation.
        simulator_class(ct.simulator).preflight()
    offline = evaluate_offline(
        policy, dataset_root, episodes, num_samples=max_samples, batch_size=batch_size,
        seed=int(train_config.get("seed", seed)), out_dir=out,
        loss_reduction=train_config.get("loss_reduction"), mask_padded=train_config.get("mask_padded_actions"),
        progress_every_s=progress_every_s,
    )  # fmt: skip
    metrics = dict(offline.metrics)
    artifacts = {f"plots/{Path(path).name}": str(path) for path in offline.plots.values()}
    details: dict = {"offline_seconds": offline.seconds}

    if ct.simulator and sim_episodes > 0:
        from steps.evaluate.closed_loop import evaluate_closed_loop

        tasks = sim_tasks_for(dataset_root, sim_tasks, ct.simulator, sim_suite)
        workers = sim_workers_for(sim_workers, len(tasks) * sim_episodes)
        sim = evaluate_closed_loop(
            policy.predict, ct.simulator, tasks, sim_episodes, max_steps=sim_max_steps, workers=workers,
            resolution=_image_resolution(dataset_root, ct.camera_keys[0]),
            options=sim_options_for(dataset_root, ct.simulator),
            out_dir=out / "rollouts" if out is not None else None,
        )  # fmt: skip
        metrics.update(sim.metrics())
        artifacts.update({f"rollouts/{Path(p).name}": str(p) for p in sim.media})
        if out is not None:
            artifacts["rollouts/episodes.json"] = str(out / "rollouts" / "episodes.json")
        details.update(sim_tasks=tasks, sim_per_task=dict(sim.per_task), sim_per_group=dict(sim.per_group),
                       sim_group_kind=sim.group_kind, sim_timings=dict(sim.timings), sim_workers=workers,
                       sim_episodes=[dataclasses.asdict(o) for o in sim.episodes])  # fmt: skip
    return EvalResult(
        metrics=metrics,
        num_samples=int(metrics.get("num_samples", len(offline.samples))),
        episodes=offline.episodes,
        seconds=time.perf_counter() - started,
        artifacts=artifacts,
        details=details,
    )
