"""The simulator interface every closed-loop benchmark implements (Meta-World, LIBERO, ManiSkill3 next).

A ``Simulator`` runs one episode at a time of any task of its benchmark. It owns the benchmark's
conventions, so the rollout loop (``steps.sim.rollout``) and the policy stay the same everywhere:

- ``reset(task, episode, seed)`` puts the task in the state that episode starts from (a seed, or a
  benchmark's fixed initial state), runs any settling steps, and returns the first observation;
- ``step(action)`` applies one action in robot units and says whether the task is solved; it need not
  render: ``observe()`` builds the observation of the current state, and the loop asks for it only at
  replanning steps and recorded frames (rendering dominates a step on a CPU);
- observations are dicts in the dataset's raw-item layout, as ``steps.policy.Policy`` reads them::

      {"images": {dataset camera key: uint8 [H, W, 3]}, "state": float32 [state_dim], "task": str, ...}

  with images already in the dataset's orientation and state built as the dataset built it;
- ``video_keys`` name the cameras whose images, side by side, make the rollout videos.

Implementations are registered by name in ``SIMULATORS`` (a config type's ``simulator:``) and are
built in-process or inside a worker process (``steps.sim.worker``), possibly in the simulator's own
venv: this module, like ``rollout`` and ``wire``, imports numpy and the standard library only.

Adding a simulator: a subpackage ``steps/sim/<name>/`` whose ``sim.py`` subclasses ``Simulator`` (the
``benchmark`` facts, ``check_tasks`` / ``max_steps`` / ``group``, ``preflight``, ``video_keys``) and
imports the simulator itself only inside methods; its name here and in
``data_adapters.config_types.SIMULATORS``; its conventions (image orientation, state, settling steps, step
limits, episode starts) documented in its module and tested against the simulator (tests/test_libero.py
shows how); evaluation then works through ``steps.evaluate.closed_loop.evaluate_closed_loop`` unchanged.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

# Config-type simulator name -> "module:class". Kept in sync with data_adapters.config_types.SIMULATORS
# (tests/test_sim_interface.py checks it).
SIMULATORS: dict[str, str] = {
    "metaworld": "steps.sim.metaworld.sim:MetaworldSimulator",
    "libero": "steps.sim.libero.sim:LiberoSimulator",
    "maniskill": "steps.sim.maniskill.sim:ManiskillSimulator",
}


@dataclass(frozen=True)
class Benchmark:
    """What the rollout loop needs to know about a benchmark besides its simulator."""

    # Simulator name (a key of SIMULATORS).
    name: str
    # What task groups are called in metric names: sim/<group_kind>/<group> ("difficulty", "suite").
    group_kind: str
    # Control rate in Hz (the video's frame rate is this over the recording stride).
    fps: int
    # Actions executed from each predicted chunk before the policy is queried again (None: the chunk).
    replan_steps: int | None
    # Action dimension the simulator takes.
    action_dim: int
    # Record every n-th step in rollout videos (fps / n frames a second).
    video_every: int = 1


class SimulatorNotReady(RuntimeError):
    """A simulator cannot run on this machine; the message is one line naming the fix."""


class Simulator(ABC):
    """One simulator instance; see the module docstring for the contract."""

    benchmark: ClassVar[Benchmark]
    video_keys: tuple[str, ...]
    # Methods beyond the interface a worker process may call by name (``steps.sim.worker``'s "call"), e.g.
    # ManiSkill's motion-planned ``demonstrate``; nothing else is callable from the other side.
    remote_methods: ClassVar[tuple[str, ...]] = ()

    @abstractmethod
    def reset(self, task: str, episode: int, seed: int) -> dict:
        """Start `episode` of `task` (seeded by `seed`); return the first observation."""

    @abstractmethod
    def step(self, action: np.ndarray) -> bool:
        """Apply one action (robot units); True when the task is solved after it."""

    @abstractmethod
    def observe(self) -> dict:
        """The policy's observation of the current state (renders the cameras)."""

    # Class-level facts (no simulator needed, so the driver of worker processes can ask them).
    @classmethod
    @abstractmethod
    def max_steps(cls, task: str) -> int:
        """The benchmark's step limit for `task` (the rollout loop may use fewer)."""

    @classmethod
    @abstractmethod
    def group(cls, task: str) -> str:
        """The group `task` belongs to (difficulty, suite)."""

    @classmethod
    @abstractmethod
    def check_tasks(cls, tasks: Sequence[str]) -> list[str]:
        """`tasks` as the benchmark's task names, or a ValueError naming an unknown one."""

    @classmethod
    def own_python(cls) -> str | None:
        """The interpreter of the simulator's own venv when it cannot run in this one (its pins clash with
        the main environment's): the rollout loop then runs it in worker processes of that python, at least
        one. None: this interpreter (in-process allowed). Default: ``$VLA_SFT_SIM_PYTHON_<NAME>`` when set
        (e.g. ``VLA_SFT_SIM_PYTHON_LIBERO``), so any simulator can be moved into a venv of its own."""
        return os.environ.get(f"VLA_SFT_SIM_PYTHON_{cls.benchmark.name.upper()}") or None

    @classmethod
    def preflight(cls) -> None:
        """Raise SimulatorNotReady (one line naming the package, variable or command that fixes it) when
        the simulator, its renderer or its assets are missing; called before the first episode."""
        return None

    def timings(self) -> dict[str, float]:
        """Seconds spent so far, by kind ("reset", "physics", "render", ...); empty if not measured."""
        return {}

    def close(self) -> None:  # noqa: B027 - optional: a simulator with nothing to free keeps it
        """Free renderers and simulators."""

    def __enter__(self) -> Simulator:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def simulator_class(name: str) -> type[Simulator]:
    """The Simulator class registered under `name` (imports its module, i.e. the simulator package)."""
    if name not in SIMULATORS:
        raise ValueError(f"simulator: {name!r} is not one of {sorted(SIMULATORS)}")
    module, _, cls = SIMULATORS[name].partition(":")
    return getattr(importlib.import_module(module), cls)


def make_simulator(name: str, options: Mapping[str, Any] | None = None) -> Simulator:
    return simulator_class(name)(**dict(options or {}))


def check_action(action: Any, dim: int, who: str) -> np.ndarray:
    """A finite float vector of `dim` values, or a ValueError naming `who`."""
    action = np.asarray(action, dtype=np.float64).reshape(-1)
    if action.shape != (dim,) or not np.all(np.isfinite(action)):
        raise ValueError(f"{who}: expected an action of {dim} finite numbers, got {action!r}")
    return action


def check_chunk(chunk: Any, dim: int) -> np.ndarray:
    """A policy's answer as float32 [H, dim] (a single action [dim] becomes [1, dim])."""
    chunk = np.asarray(chunk, dtype=np.float32)
    if chunk.ndim == 1:
        chunk = chunk[None]
    if chunk.ndim != 2 or chunk.shape[1] != dim or len(chunk) == 0:
        raise ValueError(f"policy_fn: expected actions of shape [H, {dim}] or [{dim}], got {chunk.shape}")
    return chunk


def group_mean(values: Mapping[str, float], groups: Mapping[str, str]) -> dict[str, float]:
    """Mean of per-task values per group (each task once)."""
    out: dict[str, list[float]] = {}
    for task, value in values.items():
        out.setdefault(groups[task], []).append(value)
    return {g: float(np.mean(v)) for g, v in out.items()}


def task_list(tasks: Sequence[str]) -> list[str]:
    tasks = list(tasks)
    if not tasks:
        raise ValueError("tasks: expected at least one task")
    if len(set(tasks)) != len(tasks):
        raise ValueError(f"tasks: duplicates in {tasks}")
    return tasks


def check_renderer(timeout_s: float = 120.0) -> str:
    """Open an offscreen MuJoCo OpenGL context in a child process (a broken driver can crash the process
    that tries), with the backend ``MUJOCO_GL`` names (default egl). Returns the backend; raises
    SimulatorNotReady naming the fix."""
    backend = os.environ.get("MUJOCO_GL") or "egl"
    if backend not in ("egl", "osmesa"):
        raise SimulatorNotReady(f"MUJOCO_GL={backend}: headless rendering needs MUJOCO_GL=egl or osmesa")
    probe = "import mujoco; c = mujoco.GLContext(16, 16); c.make_current(); c.free()"
    try:
        done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=timeout_s,
                              env={**os.environ, "MUJOCO_GL": backend})  # fmt: skip
    except subprocess.TimeoutExpired:
        raise SimulatorNotReady(
            f"renderer: opening a MUJOCO_GL={backend} context took over {timeout_s:.0f} s"
        ) from None
    if done.returncode != 0:
        lines = [line.strip() for line in done.stderr.splitlines() if line.strip()]
        why = lines[-1] if lines else f"exit code {done.returncode}"
        package = "libegl1 and libgl1-mesa-dri" if backend == "egl" else "libosmesa6"
        raise SimulatorNotReady(
            f"renderer: MuJoCo cannot open a MUJOCO_GL={backend} context ({why}); install Mesa's {package} "
            "(bash .ci/install_system_packages.sh) or set MUJOCO_GL=osmesa / egl"
        )
    return backend


def import_triton_before_mesa() -> None:
    """Import triton (shipped with Linux builds of torch) before Mesa starts its software renderer.

    Mesa's llvmpipe (EGL and OSMesa alike) loads the system libLLVM; importing triton after that
    segfaults the process (Mesa 22.3 / LLVM 15 with triton 3.8), and torch imports triton lazily, e.g.
    the first time a model is built under a device context. In the other order both work. Every simulator
    that renders in a process that may also run the policy calls this first.
    """
    import importlib.util

    if "triton" not in sys.modules and importlib.util.find_spec("triton") is not None:
        import triton  # noqa: F401
