"""Closed-loop evaluation of a policy in the simulator its config type names (``simulator:``).

Every simulator goes through one interface (``steps.sim.base.Simulator``) and one rollout loop
(``steps.sim.rollout``): the same replanning rule, the same results (success per task and per group --
Meta-World difficulty, LIBERO suite -- episode lengths, seeds, rollout GIFs and a PNG strip). What differs
per benchmark lives in its package: episodes per task from seeds (Meta-World) or from the suite's fixed
initial states (LIBERO), image orientation, state construction, settling steps, step limits.

``evaluate_closed_loop`` takes a batch policy (``steps.policy.Policy.predict``); ``evaluate_metaworld``
keeps the single-observation form the Meta-World tests and scripted experts use:
``policy_fn(obs) -> float[H, 4]`` with optional ``uses_images = False`` (no rendering) and ``reset()``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from steps.sim.rollout import RolloutResult, one_at_a_time, run_benchmark

PolicyFn = Callable[[dict], np.ndarray]
EVAL_SEED_START = 1000  # default evaluation seeds, away from the 0.. seeds used to generate demonstrations
SimEvalResult = RolloutResult  # the former name


def seed_list(seeds, episodes_per_task: int) -> list[int]:
    """One start seed (start, start + 1, ...), an explicit list of `episodes_per_task` seeds, or None."""
    if not (isinstance(episodes_per_task, int) and episodes_per_task >= 1):
        raise ValueError(f"episodes_per_task: expected a positive int, got {episodes_per_task!r}")
    if seeds is None:
        seeds = EVAL_SEED_START
    if isinstance(seeds, (int, np.integer)):
        return [int(seeds) + i for i in range(episodes_per_task)]
    seeds = [int(s) for s in seeds]
    if len(seeds) != episodes_per_task:
        raise ValueError(f"seeds: expected {episodes_per_task} seeds (episodes_per_task), got {len(seeds)}")
    return seeds


def evaluate_closed_loop(
    policy,
    simulator: str,
    tasks: Sequence[str],
    episodes_per_task: int,
    *,
    max_steps: int | None = None,
    replan_steps: int | None = None,
    resolution: int | None = None,
    seeds: int | Sequence[int] | None = None,
    workers: int = 0,
    out_dir: str | Path | None = None,
    record_episodes: int = 3,
    options: Mapping[str, Any] | None = None,
    log: Callable[[str], None] | None = print,
) -> RolloutResult:
    """`policy(list of observations) -> [B, H, action_dim]` on `simulator`'s `tasks`; `options` go to the
    simulator (e.g. ManiSkill's control_mode) besides `resolution`.

    `replan_steps`: None uses the benchmark's rule (LIBERO: 5, as openpi) or else the whole chunk.
    A simulator with a venv of its own (``Simulator.own_python``) always runs in worker processes.
    """
    from steps.sim.base import simulator_class

    bench = simulator_class(simulator).benchmark
    options = {**(options or {}), **({} if resolution is None else {"resolution": resolution})}
    return run_benchmark(
        simulator, policy, tasks, episodes_per_task, seed_list(seeds, episodes_per_task), options=options,
        max_steps=max_steps, replan_steps=replan_steps or bench.replan_steps, workers=workers, out_dir=out_dir,
        record_episodes=record_episodes, log=log,
    )  # fmt: skip


def evaluate_metaworld(
    policy_fn: PolicyFn,
    tasks: Sequence[str],
    episodes_per_task: int = 10,
    seeds: int | Sequence[int] | None = None,
    max_steps: int = 500,
    replan_every: int | None = None,
    *,
    resolution: int = 224,
    out_dir: str | Path | None = None,
    record_episodes: int = 3,
    workers: int = 0,
    log: Callable[[str], None] | None = print,
) -> RolloutResult:
    """Roll a single-observation `policy_fn` out on Meta-World tasks for `episodes_per_task` seeded episodes.

    `replan_every`: actions executed from each chunk before querying again (None: the whole chunk).
    """
    uses_images = bool(getattr(policy_fn, "uses_images", True))
    records = out_dir is not None and record_episodes > 0
    return run_benchmark(
        "metaworld", one_at_a_time(policy_fn), tasks, episodes_per_task, seed_list(seeds, episodes_per_task),
        options={"resolution": resolution if uses_images or records else None}, max_steps=max_steps,
        replan_steps=replan_every, workers=workers, out_dir=out_dir, record_episodes=record_episodes,
        on_episode_start=getattr(policy_fn, "reset", None), log=log,
    )  # fmt: skip


class ScriptedExpertPolicy:
    """Meta-World's scripted expert as a policy_fn (reads the full state; one action per query)."""

    uses_images = False

    def __init__(self):
        self._experts: dict[str, Callable] = {}

    def __call__(self, obs: dict) -> np.ndarray:
        from steps.sim.metaworld.env import expert_policy

        name = obs["env_name"]
        if name not in self._experts:
            self._experts[name] = expert_policy(name)
        return self._experts[name](obs["environment_state"])[None]


class RandomPolicy:
    """Uniform random actions in [-1, 1]^4, `horizon` per query; reproducible from `seed`."""

    uses_images = False

    def __init__(self, horizon: int = 5, seed: int = 0):
        self.horizon = horizon
        self._rng = np.random.default_rng(seed)

    def __call__(self, obs: dict) -> np.ndarray:
        return self._rng.uniform(-1.0, 1.0, size=(self.horizon, 4)).astype(np.float32)
