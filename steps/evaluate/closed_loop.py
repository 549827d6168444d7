"""Closed-loop Meta-World evaluation: success rates per task and per difficulty, plus rollout media.

Protocol (LeRobot's and RLinf's Meta-World evaluation): N episodes per task from fixed seeds, up to a
step limit, success if it is ever reached (the episode stops there). The policy is queried, its action
chunk executed for `replan_every` steps (the config type's action horizon), then queried again.

The policy is any callable `policy_fn(obs) -> actions` where `obs` is one unbatched observation in the
same layout as a raw dataset item (data_adapters.lerobot_reader.LeRobotFrames), so an inference policy
can reuse the training input transform:
    {"images": {"observation.image": uint8[R, R, 3]}, "state": float32[4], "task": str,
     "environment_state": float64[39], "env_name": str}
and `actions` is float[H, 4] (or float[4]) in robot units. Optional attributes: `uses_images = False`
skips rendering (the scripted expert and random policies do not look), `reset()` is called at the start
of every episode.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from steps.sim.metaworld.tasks import DIFFICULTY_TO_TASKS, check_task_names

PolicyFn = Callable[[dict], np.ndarray]
EVAL_SEED_START = 1000  # default evaluation seeds, away from the 0.. seeds used to generate demonstrations
_GIF_EVERY = 4  # keep every 4th frame of a recorded rollout (80 fps -> 20 fps)


@dataclass
class EpisodeOutcome:
    env_name: str
    seed: int
    success: bool
    steps: int  # steps executed (the success step when it succeeded)


@dataclass
class SimEvalResult:
    """Success rates (fractions in [0, 1]); `per_task` is keyed by environment name."""

    success_rate: float
    per_task: dict[str, float]
    per_difficulty: dict[str, float]
    episodes: list[EpisodeOutcome]
    media: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def metrics(self, prefix: str = "sim") -> dict[str, float]:
        """Flat metric dict for MLflow / cards."""
        out = {f"{prefix}/success_rate": self.success_rate, f"{prefix}/episodes": float(len(self.episodes))}
        out.update({f"{prefix}/success/{k}": v for k, v in self.per_task.items()})
        out.update({f"{prefix}/difficulty/{k}": v for k, v in self.per_difficulty.items()})
        return out

    def to_dict(self) -> dict:
        return asdict(self)


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
    log: Callable[[str], None] | None = print,
) -> SimEvalResult:
    """Roll `policy_fn` out on every task for `episodes_per_task` seeded episodes.

    `seeds`: one start seed (episodes use start, start + 1, ...), an explicit list of
    `episodes_per_task` seeds (the same for every task), or None for EVAL_SEED_START.
    `replan_every`: actions executed from each chunk before querying again (None: the whole chunk).
    `out_dir`: where the first `record_episodes` rollouts go as GIFs plus one image strip.
    """
    from steps.sim.metaworld.env import MetaworldEnv

    tasks = check_task_names(tasks)
    seed_list = _seed_list(seeds, episodes_per_task)
    if not (isinstance(max_steps, int) and max_steps >= 1):
        raise ValueError(f"max_steps: expected a positive int, got {max_steps!r}")
    if replan_every is not None and not (isinstance(replan_every, int) and replan_every >= 1):
        raise ValueError(f"replan_every: expected a positive int or None, got {replan_every!r}")
    uses_images = bool(getattr(policy_fn, "uses_images", True))
    # Record episode 0 of each task first, then episode 1, ... (spreads the media over tasks).
    recorded = {(t, e) for e, t in _interleave(tasks, episodes_per_task)[: record_episodes if out_dir else 0]}
    start = time.perf_counter()
    from steps.progress import Progress

    # One line per episode (an episode is seconds to minutes): which one, its result and step count, ETA.
    progress = Progress("closed loop", len(tasks) * len(seed_list), unit="episodes", every_s=0, log=log)
    outcomes: list[EpisodeOutcome] = []
    recordings: list[tuple[EpisodeOutcome, list[np.ndarray]]] = []
    for env_name in tasks:
        needs_render = uses_images or any(t == env_name for t, _ in recorded)
        with MetaworldEnv(env_name, resolution=resolution if needs_render else None) as env:
            for episode, seed in enumerate(seed_list):
                frames: list[np.ndarray] | None = [] if (env_name, episode) in recorded else None
                outcome = _run_episode(env, policy_fn, seed, max_steps, replan_every, uses_images, frames)
                outcomes.append(outcome)
                result = "success" if outcome.success else "no success"
                progress.advance(1, f"{env_name} episode {episode + 1}/{len(seed_list)} (seed {seed}): "
                                    f"{result} after {outcome.steps} steps")  # fmt: skip
                if frames is not None:
                    recordings.append((outcome, frames))
        rate = np.mean([o.success for o in outcomes if o.env_name == env_name])
        if log:
            log(f"closed loop: {env_name}: success rate {rate:.2f} over {episodes_per_task} episodes")
    per_task = {t: float(np.mean([o.success for o in outcomes if o.env_name == t])) for t in tasks}
    per_difficulty = {
        group: float(np.mean([per_task[t] for t in members if t in per_task]))
        for group, members in DIFFICULTY_TO_TASKS.items()
        if any(t in per_task for t in members)
    }
    media = _save_media(recordings, Path(out_dir)) if out_dir and recordings else []
    return SimEvalResult(
        success_rate=float(np.mean([o.success for o in outcomes])),
        per_task=per_task,
        per_difficulty=per_difficulty,
        episodes=outcomes,
        media=media,
        seconds=round(time.perf_counter() - start, 2),
    )


def _run_episode(env, policy_fn, seed, max_steps, replan_every, uses_images, frames) -> EpisodeOutcome:
    if hasattr(policy_fn, "reset"):
        policy_fn.reset()
    env.reset(seed)
    limit = min(max_steps, env.max_steps)
    steps, success = 0, False
    current: list = [None]  # frame of the current state once rendered (rendering costs ~0.1 s)

    def frame() -> np.ndarray:
        if current[0] is None:
            current[0] = env.render()
        return current[0]

    if frames is not None:
        frames.append(frame())
    while steps < limit and not success:
        chunk = np.asarray(policy_fn(env.observation(frame() if uses_images else None)), dtype=np.float32)
        if chunk.ndim == 1:
            chunk = chunk[None]
        if chunk.ndim != 2 or chunk.shape[1] != 4 or len(chunk) == 0:
            raise ValueError(f"policy_fn: expected actions of shape [H, 4] or [4], got {chunk.shape}")
        n = len(chunk) if replan_every is None else min(replan_every, len(chunk))
        for action in chunk[:n]:
            success = env.step(action).success
            current[0] = None
            steps += 1
            done = success or steps >= limit
            if frames is not None and (done or steps % _GIF_EVERY == 0):
                frames.append(frame())
            if done:
                break
    return EpisodeOutcome(env.task, int(seed), success, steps)


def _seed_list(seeds, episodes_per_task: int) -> list[int]:
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


def _interleave(tasks: Sequence[str], episodes: int) -> list[tuple[int, str]]:
    return [(e, t) for e in range(episodes) for t in tasks]


def _save_media(recordings, out_dir: Path) -> list[str]:
    """One GIF per recorded rollout and a PNG strip (one row of 6 frames per rollout)."""
    import imageio.v2 as imageio

    out_dir.mkdir(parents=True, exist_ok=True)
    paths, rows = [], []
    for outcome, frames in recordings:
        tag = "success" if outcome.success else "fail"
        gif = out_dir / f"{outcome.env_name}_seed{outcome.seed}_{tag}.gif"
        imageio.mimsave(gif, frames, duration=1000 * _GIF_EVERY / 80, loop=0)
        paths.append(str(gif))
        picks = np.linspace(0, len(frames) - 1, num=6).round().astype(int)
        rows.append(np.concatenate([frames[i] for i in picks], axis=1))
    strip = out_dir / "rollout_strip.png"
    imageio.imwrite(strip, np.concatenate(rows, axis=0))
    return [str(strip), *paths]


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
