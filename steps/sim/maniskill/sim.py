"""ManiSkill3 behind the simulator interface (``steps.sim.base.Simulator``).

The class-level facts (tasks, step limits, preflight, the venv's python) are read in the main process; an
instance only ever lives in a simulator worker process (``steps.sim.worker``) started with the ManiSkill
venv's python (``own_python``), where it builds ``backend.ManiskillTask`` environments, one per task, kept.

Conventions: episodes start from a seed (one seed, one episode: resets rebuild the scene); the observation
is the ``base_camera`` image under ``observation.images.top`` and the 7-d state of ``backend``; actions are
in the dataset's control mode (``control_mode`` option, ``pd_ee_delta_pose`` by default); 20 Hz; the step
limit is the task table's; the policy's whole chunk is executed unless the caller replans sooner.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import ClassVar

import numpy as np

from steps.sim.base import Benchmark, Simulator, SimulatorNotReady
from steps.sim.maniskill import tasks as task_table

IMAGE_KEY = "observation.images.top"
GROUP = "tabletop"  # every supported task is a Panda tabletop task: one group


class ManiskillSimulator(Simulator):
    benchmark = Benchmark(name="maniskill", group_kind="category", fps=task_table.CONTROL_FREQ,
                          replan_steps=None, action_dim=7, video_every=2)  # fmt: skip
    video_keys = (IMAGE_KEY,)
    remote_methods: ClassVar[tuple[str, ...]] = ("demonstrate",)

    def __init__(self, resolution: int | None = 128, control_mode: str = task_table.DATASET_CONTROL_MODE):
        """`resolution=None`: no camera reads (observations without images)."""
        if control_mode not in task_table.CONTROL_MODES:
            raise ValueError(
                f"control_mode: expected one of {task_table.CONTROL_MODES}, got {control_mode!r}"
            )
        self.resolution, self.control_mode = resolution, control_mode
        self._envs: dict = {}
        self._env = None
        self._times = {"make": 0.0, "reset": 0.0, "physics": 0.0, "render": 0.0}

    @classmethod
    def own_python(cls) -> str | None:
        from steps.sim.maniskill.venv import venv_python

        return str(venv_python())

    @classmethod
    def preflight(cls) -> None:
        from steps.sim.maniskill.venv import check_vulkan, is_ready, venv_dir

        if not is_ready():
            raise SimulatorNotReady(
                f"ManiSkill: no working venv at {venv_dir()}; build it once: python -m steps.sim.maniskill.venv"
            )
        try:
            check_vulkan()
        except RuntimeError as err:
            raise SimulatorNotReady(str(err)) from None

    @classmethod
    def check_tasks(cls, tasks: Sequence[str]) -> list[str]:
        return list(task_table.check_task_names(tasks))

    @classmethod
    def max_steps(cls, task: str) -> int:
        return task_table.max_steps(task)

    @classmethod
    def group(cls, task: str) -> str:
        task_table.check_task_names([task])
        return GROUP

    def _task_env(self, task: str):
        from steps.sim.maniskill.backend import ManiskillTask

        if task not in self._envs:
            began = time.perf_counter()
            self._envs[task] = ManiskillTask(task, self.control_mode, self.resolution)
            self._times["make"] += time.perf_counter() - began
        return self._envs[task]

    def reset(self, task: str, episode: int, seed: int) -> dict:
        began = time.perf_counter()
        self._env = self._task_env(task)
        self._env.reset(seed)
        self._times["reset"] += time.perf_counter() - began
        return self.observe()

    def step(self, action: np.ndarray) -> bool:
        if self._env is None:
            raise RuntimeError("maniskill: call reset() before step()")
        began = time.perf_counter()
        success = self._env.step(action)
        self._times["physics"] += time.perf_counter() - began
        return success

    def observe(self) -> dict:
        obs = {
            "state": self._env.state(),
            "task": task_table.prompt(self._env.task),
            "env_name": self._env.task,
        }
        if self.resolution is not None:
            began = time.perf_counter()
            obs["images"] = {IMAGE_KEY: self._env.render()}
            self._times["render"] += time.perf_counter() - began
        return obs

    def demonstrate(self, task: str, seed: int) -> dict:
        """The motion planner's solution from ``seed``, in this simulator's control mode (``backend``);
        the environment is left reset to ``seed``, so ``step`` replays it."""
        self._env = self._task_env(task)
        return self._env.demonstrate(int(seed))

    def timings(self) -> dict[str, float]:
        return dict(self._times)

    def close(self) -> None:
        for env in self._envs.values():
            env.close()
        self._envs.clear()
        self._env = None
