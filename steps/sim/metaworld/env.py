"""One Meta-World task with the lerobot/metaworld_mt50 camera, shared by data generation and evaluation.

Facts this module encodes (measured against metaworld 3.1 and lerobot/metaworld_mt50):
- Observations are the 39-d goal-observable vector (MT50 setting); the robot state the policy sees is its
  first 4 dims (hand xyz, gripper).
- The camera is metaworld 3.1's `corner4`: `corner2`'s orientation moved to (0.75, 0.075, 0.7). MuJoCo
  renders it upside down relative to lerobot/metaworld_mt50, whose frames are rotated 180 degrees, i.e.
  both image axes flipped.
- Rendering on a CPU goes through Mesa: `MUJOCO_GL=egl` (llvmpipe) or `osmesa`. MuJoCo picks the backend
  when it is first imported, so `configure_headless_gl()` must run before that; every function here calls
  it. A 1024 shadow map renders ~1.6x faster than the default 4096 and looks the same at these sizes.
- Initial conditions are drawn from the environment's own seeded generator, so one seed gives one
  episode start, whatever ran before in the process; stepping is deterministic, so stored actions
  replayed from the stored seed reproduce the episode.
"""

from __future__ import annotations

import os
import sys
import warnings
from dataclasses import dataclass

import numpy as np

from steps.sim.base import import_triton_before_mesa
from steps.sim.metaworld.tasks import check_task_names, task_string

CAMERA = "corner4"
SHADOW_SIZE = 1024
FPS = 80  # Meta-World's control rate; the dataset's fps.
MAX_EPISODE_STEPS = 500  # Meta-World truncates episodes here.
IMAGE_KEY = "observation.image"
STATE_DIM = 4
ENV_STATE_DIM = 39
_GL_BACKENDS = ("egl", "osmesa", "glfw")


def configure_headless_gl(backend: str | None = None) -> str:
    """Choose MuJoCo's OpenGL backend before MuJoCo is imported; returns the backend in use.

    An explicit `backend` or an existing `MUJOCO_GL` wins; otherwise EGL (works headless with Mesa).
    """
    chosen = backend or os.environ.get("MUJOCO_GL") or "egl"
    if chosen not in _GL_BACKENDS:
        raise ValueError(f"MUJOCO_GL: expected one of {_GL_BACKENDS}, got {chosen!r}")
    if "mujoco" in sys.modules:  # too late to choose: report what MuJoCo picked if it differs
        active = sys.modules["mujoco"].gl_context.GLContext.__module__.rsplit(".", 1)[-1]
        if active != chosen:
            raise RuntimeError(
                f"MuJoCo was imported with the {active!r} OpenGL backend; set MUJOCO_GL={chosen} before "
                "anything imports mujoco or metaworld (headless machines need egl or osmesa)"
            )
        return active
    os.environ["MUJOCO_GL"] = chosen
    return chosen


@dataclass
class StepResult:
    """What one environment step returns, in the dataset's terms."""

    obs: np.ndarray  # float64[39], observation after the step
    reward: float
    success: bool


class MetaworldEnv:
    """A single Meta-World task: `reset(seed)`, `step(action)`, `render()` (mt50 camera, uint8 HxWx3).

    `resolution=None` builds no renderer (physics only, ~1,000 steps/s here); rendering a 224² frame
    on llvmpipe costs ~70-190 ms, so callers render only the frames they need.
    """

    def __init__(self, task: str, *, resolution: int | None = 224, camera: str = CAMERA):
        (self.task,) = check_task_names([task])
        if resolution is not None and not (isinstance(resolution, int) and 16 <= resolution <= 2048):
            raise ValueError(f"resolution: expected an int in [16, 2048], got {resolution!r}")
        try:
            configure_headless_gl()
        except RuntimeError:
            if resolution is not None:  # physics alone does not need OpenGL
                raise
        import mujoco
        from metaworld.env_dict import ALL_V3_ENVIRONMENTS

        self.prompt = task_string(task)
        self.resolution = resolution
        env = ALL_V3_ENVIRONMENTS[task]()
        # Goal-observable (MT50) observations; the cached observation space must be rebuilt.
        env._partially_observable = False
        del env.sawyer_observation_space
        # Draw each episode's start from env.np_random (seeded in reset) instead of a frozen vector.
        env._freeze_rand_vec = False
        env.seeded_rand_vec = True
        env._set_task_called = True
        self._env = env
        self._camera = camera
        if mujoco.mj_name2id(env.model, mujoco.mjtObj.mjOBJ_CAMERA, camera) < 0:
            raise ValueError(f"camera: {camera!r} is not a camera of {task}")
        self._renderer = None
        if resolution is not None:
            import_triton_before_mesa()
            vis = env.model.vis
            vis.quality.shadowsize = SHADOW_SIZE
            # The offscreen buffer must hold the frame (Meta-World's XML allows 640x480).
            vis.global_.offwidth = max(vis.global_.offwidth, resolution)
            vis.global_.offheight = max(vis.global_.offheight, resolution)
            self._renderer = mujoco.Renderer(env.model, resolution, resolution)
        self._obs: np.ndarray | None = None
        self.steps = 0

    @property
    def max_steps(self) -> int:
        return int(self._env.max_path_length)

    def reset(self, seed: int) -> np.ndarray:
        """Start the episode that `seed` names; returns the 39-d observation."""
        if not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed: expected a non-negative int, got {seed!r}")
        self._env.seed(int(seed))
        obs, _ = self._env.reset()
        self._obs = np.asarray(obs, dtype=np.float64)
        self.steps = 0
        return self._obs.copy()

    def step(self, action: np.ndarray) -> StepResult:
        """Apply one 4-d action (Meta-World clips it to [-1, 1] internally; we pass it unchanged)."""
        if self._obs is None:
            raise RuntimeError(f"{self.task}: call reset(seed) before step()")
        action = np.asarray(action, dtype=np.float32).reshape(-1)
        if action.shape != (4,) or not np.all(np.isfinite(action)):
            raise ValueError(f"action: expected 4 finite numbers, got {action!r}")
        if self.steps >= self.max_steps:
            raise RuntimeError(f"{self.task}: episode is over after {self.max_steps} steps; reset it")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Meta-World warns on every out-of-range action
            obs, reward, _, _, info = self._env.step(action)
        self._obs = np.asarray(obs, dtype=np.float64)
        self.steps += 1
        return StepResult(self._obs.copy(), float(reward), bool(info["success"]))

    def render(self) -> np.ndarray:
        """Current frame as lerobot/metaworld_mt50 shows it: uint8 [R, R, 3], rotated 180 degrees."""
        if self._renderer is None:
            raise RuntimeError(f"{self.task}: built with resolution=None, cannot render")
        self._renderer.update_scene(self._env.data, camera=self._camera)
        return np.ascontiguousarray(self._renderer.render()[::-1, ::-1])

    def observation(self, image: np.ndarray | None = None) -> dict:
        """The policy's view of the current step (see steps.evaluate.closed_loop for the contract)."""
        if self._obs is None:
            raise RuntimeError(f"{self.task}: call reset(seed) first")
        return {
            "images": {} if image is None else {IMAGE_KEY: image},
            "state": self._obs[:STATE_DIM].astype(np.float32),
            "environment_state": self._obs.copy(),  # float64, as the scripted experts expect
            "task": self.prompt,
            "env_name": self.task,
        }

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None
        self._env.close()

    def __enter__(self) -> MetaworldEnv:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def expert_policy(task: str):
    """Meta-World's scripted expert for `task`: a function obs[39] -> float32[4] (raw, not clipped)."""
    (task,) = check_task_names([task])
    from metaworld.policies import ENV_POLICY_MAP

    policy = ENV_POLICY_MAP[task]()

    def act(obs: np.ndarray) -> np.ndarray:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return np.asarray(policy.get_action(np.asarray(obs, dtype=np.float64)), dtype=np.float32)

    return act
