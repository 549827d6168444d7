"""One LIBERO task with openpi's LIBERO conventions (examples/libero in openpi; the public LIBERO LeRobot
dataset physical-intelligence/libero and pi05_libero follow them).

Conventions encoded here, each checked against LIBERO itself in tests/test_libero.py:
- Images: ``agentview_image`` -> ``image`` and ``robot0_eye_in_hand_image`` -> ``wrist_image``, both
  rotated 180 degrees (``[::-1, ::-1]``: MuJoCo's offscreen buffer is bottom-up), which makes the
  third-person view upright and unmirrored. The policy's input transform then resizes with padding to
  224 (``data_adapters.image_ops.resize_with_pad``), as openpi's client does before sending.
- State (8): ``robot0_eef_pos`` (3) + axis-angle of ``robot0_eef_quat`` (3, robosuite's x, y, z, w
  order) + ``robot0_gripper_qpos`` (2).
- Actions (7): OSC_POSE deltas in [-1, 1] (position scaled to at most 5 cm, rotation to 0.5 rad per step)
  and the gripper (-1 open, +1 closed), at 20 Hz.
- Each episode starts from the suite's fixed initial state number ``episode`` (50 per task), then
  ``WAIT_STEPS`` = 10 steps of the no-op action (arm still, gripper open) so objects settle; they do not
  count towards the step limit (``suites.MAX_STEPS``).

Rendering costs most of a step on a CPU (two 128² cameras: ~0.15-0.4 s a step vs ~25 ms of physics), so
the camera observables are switched off while stepping and rendered only in ``observe()``.
"""

from __future__ import annotations

import pickle
import time
import zipfile
from pathlib import Path

import numpy as np

from steps.sim.libero import suites

IMAGE_KEY, WRIST_KEY, STATE_KEY = "image", "wrist_image", "state"
CAMERAS = {"agentview": IMAGE_KEY, "robot0_eye_in_hand": WRIST_KEY}
FPS = 20
WAIT_STEPS = 10
NOOP_ACTION = np.array([0, 0, 0, 0, 0, 0, -1], dtype=np.float64)
ACTION_DIM = 7
STATE_DIM = 8
DEFAULT_RESOLUTION = 256  # the public dataset's image size


def quat_to_axis_angle(quat: np.ndarray) -> np.ndarray:
    """Axis-angle (3) of a unit quaternion in robosuite's (x, y, z, w) order; zero for no rotation."""
    quat = np.asarray(quat, dtype=np.float64)
    w = float(np.clip(quat[3], -1.0, 1.0))
    sin_half = np.sqrt(max(1.0 - w * w, 0.0))
    if sin_half < 1e-8:
        return np.zeros(3)
    return quat[:3] * (2.0 * np.arccos(w) / sin_half)


def policy_state(raw: dict) -> np.ndarray:
    return np.concatenate(
        [raw["robot0_eef_pos"], quat_to_axis_angle(raw["robot0_eef_quat"]), raw["robot0_gripper_qpos"]]
    ).astype(np.float32)


def policy_observation(raw: dict, prompt: str) -> dict:
    """The dataset-layout observation of one robosuite observation dict (see the module docstring)."""
    return {
        "images": {
            key: np.ascontiguousarray(raw[f"{cam}_image"][::-1, ::-1]) for cam, key in CAMERAS.items()
        },
        "state": policy_state(raw),
        "task": prompt,
    }


class _InitStateUnpickler(pickle.Unpickler):
    """LIBERO's ``.pruned_init`` files are torch.save'd numpy arrays (a zip holding a pickle). Only the
    four globals a numpy array needs are allowed, so loading them runs no other code and needs no torch."""

    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}  # fmt: skip

    def find_class(self, module, name):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(
                f"init-state file refers to {module}.{name}, which is not a numpy array part"
            )
        if module == "numpy.core.multiarray":
            module = "numpy._core.multiarray" if hasattr(np, "_core") else module
        return super().find_class(module, name)

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("init-state file holds tensors, not a numpy array")


def load_init_states(path: str | Path) -> np.ndarray:
    """The fixed initial MuJoCo states of one task: float64 [n, state size]."""
    import io

    with zipfile.ZipFile(path) as archive:
        (name,) = [n for n in archive.namelist() if n.endswith("/data.pkl")]
        states = _InitStateUnpickler(io.BytesIO(archive.read(name))).load()
    states = np.asarray(states, dtype=np.float64)
    if states.ndim != 2:
        raise ValueError(f"{path}: expected a 2-d array of initial states, got shape {states.shape}")
    return states


class LiberoTaskEnv:
    """One LIBERO task: ``reset(episode, seed)`` (fixed initial state + settling), ``step(action)``,
    ``observe()`` (dataset-layout observation), ``raw_observation()`` (robosuite's dict, cameras included)."""

    def __init__(self, task: str, *, resolution: int = DEFAULT_RESOLUTION, hard_reset: bool = True):
        """`hard_reset` (LIBERO's and openpi's default) rebuilds the MuJoCo model on every reset (~6 s here):
        every episode is then bit-for-bit the same whatever ran before. False keeps the model (~0.3 s a reset),
        but an episode then starts ~0.2 mm off (robot state after settling) depending on the previous
        episode, so results depend on how episodes were spread over workers."""
        from steps.sim.base import import_triton_before_mesa
        from steps.sim.libero.runtime import configure

        (self.task,) = suites.check_task_names([task])
        if not (isinstance(resolution, int) and 32 <= resolution <= 1024):
            raise ValueError(f"resolution: expected an int in [32, 1024], got {resolution!r}")
        self.suite = suites.suite_of(self.task)
        self.prompt = suites.task_prompt(self.task)
        self.resolution = resolution
        configure()
        import_triton_before_mesa()  # the policy may run in this process (steps.sim.base explains)
        from libero.libero import get_libero_path
        from libero.libero.envs import OffScreenRenderEnv

        bddl = Path(get_libero_path("bddl_files")) / self.suite / f"{self.task}.bddl"
        self.init_states = load_init_states(
            Path(get_libero_path("init_states")) / self.suite / f"{self.task}.pruned_init"
        )
        self._env = OffScreenRenderEnv(bddl_file_name=str(bddl), camera_heights=resolution,
                                       camera_widths=resolution, camera_names=list(CAMERAS),
                                       hard_reset=bool(hard_reset))  # fmt: skip
        self._cameras_on = True
        self.times = {"reset": 0.0, "physics": 0.0, "render": 0.0}
        self.steps = 0

    @property
    def robosuite_env(self):
        """The robosuite environment inside LIBERO's wrapper (sim, robots, observables)."""
        return self._env.env

    def _cameras(self, on: bool) -> None:
        if on != self._cameras_on:
            for cam in CAMERAS:
                self.robosuite_env.modify_observable(f"{cam}_image", "enabled", on)
            self._cameras_on = on

    def reset(self, episode: int, seed: int = 0) -> None:
        if not (isinstance(episode, (int, np.integer)) and 0 <= episode < len(self.init_states)):
            raise ValueError(
                f"episode: {self.task} has initial states 0..{len(self.init_states) - 1}, got {episode!r}"
            )
        began = time.perf_counter()
        self._cameras(False)
        self._env.seed(int(seed))
        self._env.reset()
        self._env.set_init_state(self.init_states[int(episode)])
        for _ in range(WAIT_STEPS):
            self._env.step(NOOP_ACTION)
        self.steps = 0
        self.times["reset"] += time.perf_counter() - began

    def step(self, action: np.ndarray) -> bool:
        from steps.sim.base import check_action

        action = check_action(action, ACTION_DIM, f"libero {self.task}")
        began = time.perf_counter()
        self._cameras(False)
        _, _, done, _ = self._env.step(action)
        self.steps += 1
        self.times["physics"] += time.perf_counter() - began
        return bool(done)  # LIBERO's done is its success check

    def raw_observation(self) -> dict:
        began = time.perf_counter()
        self._cameras(True)
        raw = self.robosuite_env._get_observations(force_update=True)
        self.times["render"] += time.perf_counter() - began
        return raw

    def observe(self) -> dict:
        return policy_observation(self.raw_observation(), self.prompt)

    def close(self) -> None:
        self._env.close()
