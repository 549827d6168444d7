"""LIBERO behind the simulator interface (``steps.sim.base.Simulator``); conventions in ``env`` and
``suites``. One ``LiberoTaskEnv`` per task is kept (building one takes 5-11 s here, a reset 3-9 s)."""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from steps.sim.base import Benchmark, Simulator
from steps.sim.libero import suites

# openpi's LIBERO client: replan every 5 steps from the predicted chunk.
REPLAN_STEPS = 5


class LiberoSimulator(Simulator):
    benchmark = Benchmark(name="libero", group_kind="suite", fps=20, replan_steps=REPLAN_STEPS, action_dim=7,
                          video_every=2)  # fmt: skip
    video_keys = ("image", "wrist_image")

    def __init__(self, resolution: int = 256, hard_reset: bool = True):
        """`hard_reset=False`: ~20x faster resets, not bit-reproducible per episode (``env.LiberoTaskEnv``)."""
        self.resolution = resolution
        self.hard_reset = hard_reset
        self._envs: dict = {}
        self._env = None
        self._make_seconds = 0.0

    @classmethod
    def preflight(cls) -> None:
        from steps.sim.libero.runtime import check_ready

        check_ready()

    @classmethod
    def check_tasks(cls, tasks: Sequence[str]) -> list[str]:
        return list(suites.check_task_names(tasks))

    @classmethod
    def max_steps(cls, task: str) -> int:
        return suites.MAX_STEPS[suites.suite_of(task)]

    @classmethod
    def group(cls, task: str) -> str:
        return suites.suite_of(task)

    def reset(self, task: str, episode: int, seed: int) -> dict:
        from steps.sim.libero.env import LiberoTaskEnv

        if task not in self._envs:
            began = time.perf_counter()
            self._envs[task] = LiberoTaskEnv(task, resolution=self.resolution, hard_reset=self.hard_reset)
            self._make_seconds += time.perf_counter() - began
        self._env = self._envs[task]
        self._env.reset(episode, seed)
        return self._env.observe()

    def step(self, action: np.ndarray) -> bool:
        if self._env is None:
            raise RuntimeError("libero: call reset() before step()")
        return self._env.step(action)

    def observe(self) -> dict:
        return self._env.observe()

    def timings(self) -> dict[str, float]:
        out: dict[str, float] = {"make": self._make_seconds}
        for env in self._envs.values():
            for key, value in env.times.items():
                out[key] = out.get(key, 0.0) + value
        return out

    def close(self) -> None:
        for env in self._envs.values():
            env.close()
        self._envs.clear()
        self._env = None
