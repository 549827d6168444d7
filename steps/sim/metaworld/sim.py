"""Meta-World behind the simulator interface (``steps.sim.base.Simulator``).

Conventions (LeRobot's Meta-World evaluation, lerobot/metaworld_mt50): episodes start from a seed
(``MetaworldEnv.reset``); the observation is the corner4 camera rotated 180 degrees and the 4-d hand /
gripper state (``steps.sim.metaworld.env``); up to 500 steps at 80 Hz; no settling steps; the policy's
whole chunk is executed unless the caller replans sooner. One ``MetaworldEnv`` per task is kept, built on
first use.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from steps.sim.base import Benchmark, Simulator, SimulatorNotReady, check_action, check_renderer
from steps.sim.metaworld.tasks import check_task_names, task_difficulty

MAX_EPISODE_STEPS = 500


class MetaworldSimulator(Simulator):
    benchmark = Benchmark(name="metaworld", group_kind="difficulty", fps=80, replan_steps=None, action_dim=4,
                          video_every=4)  # fmt: skip
    video_keys = ("observation.image",)

    def __init__(self, resolution: int | None = 224):
        """`resolution=None`: physics only, observations without images (the scripted experts)."""
        self.resolution = resolution
        self._envs: dict = {}
        self._env = None
        self._times = {"reset": 0.0, "physics": 0.0, "render": 0.0}

    @classmethod
    def preflight(cls) -> None:
        import importlib.util

        if importlib.util.find_spec("metaworld") is None:
            raise SimulatorNotReady('Meta-World is not installed: pip install -e ".[sim]"')
        from steps.sim.metaworld.env import configure_headless_gl

        try:
            configure_headless_gl()
        except (RuntimeError, ValueError) as err:
            raise SimulatorNotReady(str(err)) from None
        check_renderer()

    @classmethod
    def check_tasks(cls, tasks: Sequence[str]) -> list[str]:
        return list(check_task_names(tasks))

    @classmethod
    def max_steps(cls, task: str) -> int:
        return MAX_EPISODE_STEPS

    @classmethod
    def group(cls, task: str) -> str:
        return task_difficulty(task)

    def reset(self, task: str, episode: int, seed: int) -> dict:
        from steps.sim.metaworld.env import MetaworldEnv

        began = time.perf_counter()
        if task not in self._envs:
            self._envs[task] = MetaworldEnv(task, resolution=self.resolution)
        self._env = self._envs[task]
        self._env.reset(seed)
        self._times["reset"] += time.perf_counter() - began
        return self.observe()

    def step(self, action: np.ndarray) -> bool:
        if self._env is None:
            raise RuntimeError("metaworld: call reset() before step()")
        began = time.perf_counter()
        success = self._env.step(check_action(action, 4, "metaworld")).success
        self._times["physics"] += time.perf_counter() - began
        return success

    def observe(self) -> dict:
        began = time.perf_counter()
        image = self._env.render() if self.resolution is not None else None
        self._times["render"] += time.perf_counter() - began
        return self._env.observation(image)

    def timings(self) -> dict[str, float]:
        return dict(self._times)

    def close(self) -> None:
        for env in self._envs.values():
            env.close()
        self._envs.clear()
        self._env = None
