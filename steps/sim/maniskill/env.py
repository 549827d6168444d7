"""One ManiSkill3 task, seen from the main process: a client of the worker subprocess in the ManiSkill venv.

``ManiskillEnv(task, control_mode=..., resolution=...)`` starts ``python -m steps.sim.maniskill.worker`` with
the ManiSkill venv's python and talks to it over pipes (``protocol``); the worker's stderr (SAPIEN's and
mplib's chatter) goes to a log file whose tail is shown when the worker fails.

Facts (mani-skill 3.0.1 on a CPU, measured here): ``sim_backend="cpu", render_backend="cpu"``; a step
without a camera read ~4 ms; a 128x128 ``base_camera`` read 40-90 ms; the first camera read of a machine
compiles shaders (~50 s once, cached in ~/.cache/mesa_shader_cache). Resets rebuild the scene, so a seed
gives one episode whatever ran before (see worker._reset).
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from steps.sim.maniskill.protocol import ProtocolError, read_message, write_message
from steps.sim.maniskill.tasks import DATASET_CONTROL_MODE, check_task_names

IMAGE_KEY = "observation.images.top"  # the pi0_maniskill camera: ManiSkill's base_camera
STATE_DIM = ACTION_DIM = 7
_REPO = Path(__file__).resolve().parents[3]


@dataclass
class StepResult:
    obs: np.ndarray  # float32[7] robot state after the step (worker docstring)
    reward: float
    success: bool


class ManiskillEnv:
    """reset / step / render / demonstrate on one task, in one control mode, in a worker subprocess."""

    def __init__(self, task: str, *, control_mode: str = DATASET_CONTROL_MODE, resolution: int | None = 128,
                 python: str | None = None):  # fmt: skip
        from steps.sim.maniskill.venv import require_python

        (self.task,) = check_task_names([task])
        if resolution is not None and not (isinstance(resolution, int) and 16 <= resolution <= 1024):
            raise ValueError(f"resolution: expected 16..1024 pixels or None, got {resolution!r}")
        self.control_mode, self.resolution = control_mode, resolution
        self._log = tempfile.NamedTemporaryFile(prefix="maniskill-worker-", suffix=".log", delete=False)  # noqa: SIM115 (lives as long as the worker)
        env = {**os.environ, "PYTHONPATH": str(_REPO)}
        self._proc = subprocess.Popen([python or require_python(), "-m", "steps.sim.maniskill.worker"], cwd=_REPO,
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, env=env)  # fmt: skip
        try:
            info = self._call({"op": "make", "task": self.task, "control_mode": control_mode,
                               "image_size": resolution})  # fmt: skip
        except BaseException:
            self.close()
            raise
        self.max_steps: int = info["max_steps"]
        self.prompt: str = info["prompt"]
        self.action_dim: int = info["action_dim"]
        self._state: np.ndarray | None = None

    # ---- the simulator interface ----------------------------------------------------------------------
    def reset(self, seed: int) -> np.ndarray:
        if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
            raise ValueError(f"seed: expected a non-negative int, got {seed!r}")
        self._state = self._call({"op": "reset", "seed": int(seed)})["state"]
        return self._state

    def step(self, action) -> StepResult:
        action = np.asarray(action, dtype=np.float32).reshape(-1)
        if action.shape != (self.action_dim,):
            raise ValueError(f"action: expected {self.action_dim} floats, got shape {action.shape}")
        reply = self._call({"op": "step"}, {"action": action})
        self._state = reply["state"]
        return StepResult(reply["state"], reply["reward"], reply["success"])

    def render(self) -> np.ndarray:
        """uint8[R, R, 3]: the base camera at the current state."""
        if self.resolution is None:
            raise RuntimeError("render: this environment was made without a camera (resolution=None)")
        return self._call({"op": "render"})["image"]

    def observation(self, image: np.ndarray | None) -> dict:
        """The policy's input, in the layout of a pi0_maniskill dataset item."""
        obs = {"state": np.asarray(self._state, dtype=np.float32), "task": self.prompt, "env_name": self.task}
        if image is not None:
            obs["images"] = {IMAGE_KEY: image}
        return obs

    def demonstrate(self, seed: int) -> tuple[np.ndarray, bool, dict]:
        """(actions [T, 7] in this control mode, success, timings) of the motion planner's solution."""
        reply = self._call({"op": "demonstrate", "seed": int(seed)})
        return reply.pop("actions"), bool(reply["success"]), reply

    # ---- plumbing -------------------------------------------------------------------------------------
    def _call(self, header: dict, arrays: dict | None = None) -> dict:
        if self._proc is None:
            raise RuntimeError(f"{self.task}: environment is closed")
        try:
            write_message(self._proc.stdin, header, arrays)
            reply, out = read_message(self._proc.stdout)
        except (BrokenPipeError, ProtocolError) as err:
            raise RuntimeError(
                f"ManiSkill worker died during {header['op']!r} ({err}); its log:\n{self._tail()}"
            ) from None
        if not reply.get("ok"):
            raise RuntimeError(
                f"ManiSkill worker, {header['op']!r}: {reply.get('error')}\n{reply.get('traceback', '')}"
            )
        return {**reply, **out}

    def _tail(self, n: int = 3000) -> str:
        try:
            return Path(self._log.name).read_text(errors="replace")[-n:]
        except OSError:
            return "(no log)"

    def close(self) -> None:
        proc, self._proc = getattr(self, "_proc", None), None
        if proc is not None:
            try:
                if proc.poll() is None:
                    write_message(proc.stdin, {"op": "close"})
                    proc.wait(timeout=30)
            except (OSError, ProtocolError, subprocess.TimeoutExpired):
                proc.kill()
                proc.wait()
            for pipe in (proc.stdin, proc.stdout):
                if pipe is not None:
                    pipe.close()
        log = getattr(self, "_log", None)
        if log is not None:
            log.close()
            Path(log.name).unlink(missing_ok=True)
            self._log = None

    def __enter__(self) -> ManiskillEnv:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        self.close()
