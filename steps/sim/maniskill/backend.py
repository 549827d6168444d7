"""ManiSkill3 itself: one task's environment, run inside the ManiSkill venv (``ManiskillSimulator``'s side).

Imports gymnasium, mani_skill, scipy and numpy, so only the ManiSkill venv imports this module (in the
simulator worker process, ``steps.sim.worker``); the main process never does.

The robot state (7 floats, robot base frame): TCP position x, y, z (m); the TCP's rotation relative to
"pointing straight down" as a rotation vector rx, ry, rz (rad; near 0 in these tasks, so it never wraps
at pi); the gripper opening (m, the sum of the two finger joints, 0..0.08).
"""

from __future__ import annotations

import importlib
import time

import numpy as np

from steps.sim.maniskill import tasks as task_table

# TCP "pointing down": ManiSkill's Panda rest pose has the TCP quaternion (w, x, y, z) ~ (0, 1, 0, 0).
_DOWN_XYZW = np.array([1.0, 0.0, 0.0, 0.0])
# pd_ee_delta_pose (mani-skill 3.0.1 Panda): position deltas are a[:3] * 0.1 m; rotation deltas are XYZ
# Euler angles a[3:6] * rot_lower (-0.1 rad: the controller scales by the lower bound, so the sign flips),
# with |a[3:6]| clipped to 1; target = delta applied to the *current* TCP pose, in the base frame.
_POS_SCALE = 0.1
_ROT_SCALE = -0.1
_SETTLE_STEPS = 30  # extra tracking steps after the plan ends, for the tracked copy to arrive


class ManiskillTask:
    """One task in one control mode: reset / step / render / state, and motion-planned demonstrations."""

    def __init__(self, task: str, control_mode: str, image_size: int | None = None):
        import gymnasium as gym
        import mani_skill.envs  # noqa: F401  (registers the tasks)

        task_table.check_task_names([task])
        if control_mode not in task_table.CONTROL_MODES:
            raise ValueError(
                f"control_mode: expected one of {task_table.CONTROL_MODES}, got {control_mode!r}"
            )
        kwargs = {}
        if image_size is not None:
            kwargs["sensor_configs"] = {"width": int(image_size), "height": int(image_size)}
        # State observations: the camera is read only when asked (render), ~40-90 ms a frame here.
        self.env = gym.make(task, obs_mode="state", control_mode=control_mode, sim_backend="cpu",
                            render_backend="cpu", max_episode_steps=10_000, **kwargs)  # fmt: skip
        self.planner_env = None
        self.task, self.control_mode = task, control_mode
        self.action_dim = int(self.env.action_space.shape[-1])

    def reset(self, seed: int) -> None:
        _reset(self.env, seed)

    def step(self, action: np.ndarray) -> bool:
        """One action; True when the task is solved after it."""
        action = np.asarray(action, dtype=np.float32).reshape(-1)
        if action.shape != (self.action_dim,) or not np.all(np.isfinite(action)):
            raise ValueError(
                f"maniskill: expected an action of {self.action_dim} finite numbers, got {action.shape}"
            )
        return bool(_scalar(self.env.step(action)[4]["success"]))

    def render(self) -> np.ndarray:
        """uint8[R, R, 3]: the task's base_camera at the current state."""
        data = self.env.unwrapped._get_obs_sensor_data()
        return np.ascontiguousarray(_numpy(data["base_camera"]["rgb"])[0], dtype=np.uint8)

    def demonstrate(self, seed: int) -> dict:
        """Plan from ``seed`` in joint space; track the plan in this env's control mode from the same seed.

        Returns {"actions": float32[T, action_dim], "planned", "success", "plan_seconds", "seconds"}; the
        environment is left reset to ``seed``.
        """
        started = time.perf_counter()
        joint_actions, planned = self._plan(int(seed))
        plan_s = time.perf_counter() - started
        if self.control_mode == task_table.PLANNER_CONTROL_MODE:
            actions, success = self._replay(int(seed), joint_actions)
        else:
            actions, success = self._track(int(seed), joint_actions)
        _reset(self.env, seed)
        return {"actions": np.asarray(actions, dtype=np.float32).reshape(-1, self.action_dim),
                "planned": planned, "success": success, "plan_seconds": round(plan_s, 3),
                "seconds": round(time.perf_counter() - started, 3)}  # fmt: skip

    def close(self) -> None:
        for env in (self.env, self.planner_env):
            if env is not None:
                env.close()
        self.env = self.planner_env = None

    # ---- helpers --------------------------------------------------------------------------------------
    def state(self) -> np.ndarray:
        from scipy.spatial.transform import Rotation

        agent = self.env.unwrapped.agent
        pose = agent.robot.pose.inv() * agent.tcp.pose
        p, q = _numpy(pose.p)[0], _numpy(pose.q)[0]  # q: w, x, y, z
        rot = Rotation.from_quat([q[1], q[2], q[3], q[0]]) * Rotation.from_quat(_DOWN_XYZW).inv()
        qpos = _numpy(agent.robot.get_qpos())[0]
        return np.concatenate([p, rot.as_rotvec(), [qpos[-1] + qpos[-2]]]).astype(np.float32)

    def _tcp_at_base(self, env):
        from scipy.spatial.transform import Rotation

        agent = env.unwrapped.agent
        pose = agent.robot.pose.inv() * agent.tcp.pose
        q = _numpy(pose.q)[0]
        return _numpy(pose.p)[0].astype(np.float64), Rotation.from_quat([q[1], q[2], q[3], q[0]])

    def _plan(self, seed: int) -> tuple[list[np.ndarray], bool]:
        import gymnasium as gym

        if self.planner_env is None:
            self.planner_env = _ActionRecorder(gym.make(
                self.task, obs_mode="state", control_mode=task_table.PLANNER_CONTROL_MODE, sim_backend="cpu",
                render_backend="cpu", max_episode_steps=10_000,
            ))  # fmt: skip
        solve = importlib.import_module(task_table.solution_module(self.task)).solve
        _reset(self.planner_env, seed)  # solve resets plainly: start it from a fresh scene (see _reset)
        self.planner_env.actions = []
        result = solve(self.planner_env, seed=seed, debug=False, vis=False)
        # solve returns -1 when mplib finds no path; else the last step's (obs, reward, term, trunc, info).
        planned = not (isinstance(result, int) and result == -1)
        return list(self.planner_env.actions), planned

    def _replay(self, seed: int, actions: list[np.ndarray]) -> tuple[list[np.ndarray], bool]:
        _reset(self.env, seed)
        success = False
        for a in actions:
            success = bool(_scalar(self.env.step(a)[4]["success"])) or success
        return actions, success

    def _track(self, seed: int, joint_actions: list[np.ndarray]) -> tuple[list[np.ndarray], bool]:
        """Re-express the joint-space plan as end-effector deltas, closed loop.

        A second copy of the planner's environment replays the joint actions; after each of its steps its
        TCP pose is the target, and this environment gets the delta from *its own* current TCP pose to that
        target (so tracking errors do not add up) plus the same gripper command. The episode stops at the
        first success; if the plan ends first, the last target is held for up to _SETTLE_STEPS steps.
        """
        reference = self.planner_env
        _reset(reference, seed)
        _reset(self.env, seed)
        out: list[np.ndarray] = []
        targets = list(joint_actions) + [joint_actions[-1]] * _SETTLE_STEPS if joint_actions else []
        for joint_action in targets:
            reference.env.step(joint_action)  # the recorder's inner env: these are not planner actions
            p_target, r_target = self._tcp_at_base(reference)
            p, r = self._tcp_at_base(self.env)
            delta_rot = (r_target * r.inv()).as_euler("XYZ")
            action = np.zeros(7, dtype=np.float32)
            action[:3] = np.clip((p_target - p) / _POS_SCALE, -1.0, 1.0)
            rot = delta_rot / _ROT_SCALE
            norm = np.linalg.norm(rot)
            action[3:6] = rot / norm if norm > 1.0 else rot
            action[6] = joint_action[-1]
            out.append(action)
            if _scalar(self.env.step(action)[4]["success"]):
                return out, True
        return out, False


class _ActionRecorder:
    """Wraps an env for the planner: records every action it steps with (the plan, in joint space)."""

    def __init__(self, env):
        self.env, self.actions = env, []

    def step(self, action):
        self.actions.append(np.asarray(action, dtype=np.float32).copy())
        return self.env.step(action)

    def __getattr__(self, name):
        return getattr(self.env, name)


def _reset(env, seed: int) -> None:
    """Reset with a freshly built scene: PhysX keeps contact state across plain resets, so replaying the
    same actions from the same seed diverged after an earlier episode (StackCube, measured); a rebuilt
    scene makes one seed one episode whatever ran before (~0.1-0.3 s more a reset)."""
    env.reset(seed=int(seed), options={"reconfigure": True})


def _numpy(value) -> np.ndarray:
    return value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)


def _scalar(value) -> float:
    return float(_numpy(value).reshape(-1)[0])
