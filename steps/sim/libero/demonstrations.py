"""LIBERO demonstrations rendered in LIBERO, written as LeRobot v3.0 in the physical-intelligence/libero
schema (``image``, ``wrist_image``, ``state`` [8], ``actions`` [7]) with openpi's conventions (``env``).

Each episode starts from one of the task's fixed initial states (``first_state``, ``first_state + 1``,
...; evaluation uses states 0, 1, ..., so the default 10 keeps them apart), settles for the wait steps,
then follows a scripted reach-and-grasp: move above the task's first object of interest, descend, close
the gripper, lift. A proportional controller on the end-effector position makes the actions (arm
rotation held, so the rotation deltas are 0). It rarely solves the task; it is real LIBERO data with the
right images, states and actions for the offline demo (``--demo`` of pi05_libero) and for tests.

``libero://suite=libero_spatial&tasks=0&episodes=6&resolution=128`` names a dataset (tasks are names or
indices within the suite); ``fetch_libero`` generates it once into the cache. ``meta/libero.json`` records
every episode's task and initial state. ``python -m steps.sim.libero.demonstrations --out DIR ...`` writes
one directly (the shipped demo dataset was made so; see DEMO_DATASET).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from steps.sim.libero import suites

URI_SCHEME = "libero://"
META_FILE = "meta/libero.json"
GENERATOR_VERSION = 1  # bump when the generated data change for the same parameters
ROBOT_TYPE = "panda"
# Shipped with the repository for the pi05_libero demo. Regenerate:
#   python -m steps.sim.libero.demonstrations --suite libero_spatial --tasks 0 --episodes 6 \
#       --resolution 128 --out data_adapters/demo_data/libero_demo
DEMO_DATASET = Path(__file__).resolve().parents[3] / "data_adapters" / "demo_data" / "libero_demo"
# The scripted motion: (phase, steps, height above the object in m, gripper: -1 open / +1 closed).
SCRIPT = (
    ("above", 24, 0.12, -1.0),
    ("descend", 16, 0.03, -1.0),
    ("grasp", 8, 0.03, 1.0),
    ("lift", 12, 0.15, 1.0),
)
GAIN = 1.0 / 0.05  # position error (m) -> OSC action units (the controller scales 1.0 to 5 cm)


@dataclass(frozen=True)
class LiberoDataSpec:
    """What to generate; also the cache key."""

    suite: str = suites.DEFAULT_SUITE
    # Task names (or indices within the suite, resolved in __post_init__).
    tasks: tuple[str, ...] = ("0",)
    # Episodes per task (initial states first_state, first_state + 1, ...).
    episodes: int = 6
    first_state: int = 10
    # Square camera side in pixels (the public dataset's is 256).
    resolution: int = 128
    video_codec: str = "av1"

    def __post_init__(self):
        object.__setattr__(self, "suite", suites.check_suite(self.suite))
        object.__setattr__(self, "tasks", suites.check_task_names(self.tasks, self.suite))
        for name in ("episodes", "first_state", "resolution"):
            if not isinstance(getattr(self, name), int) or isinstance(getattr(self, name), bool):
                raise ValueError(f"{name}: expected an int, got {getattr(self, name)!r}")
        if self.episodes < 1 or self.first_state < 0:
            raise ValueError(
                f"episodes / first_state: expected >= 1 / >= 0, got {self.episodes} / {self.first_state}"
            )
        if self.first_state + self.episodes > suites.INIT_STATES_PER_TASK:
            raise ValueError(
                f"first_state + episodes: each task has {suites.INIT_STATES_PER_TASK} initial states"
            )
        if not 32 <= self.resolution <= 512:
            raise ValueError(f"resolution: expected 32..512 pixels, got {self.resolution}")
        if self.video_codec not in ("av1", "h264"):
            raise ValueError(f"video_codec: expected 'av1' or 'h264', got {self.video_codec!r}")

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "tasks": list(self.tasks)}

    def cache_key(self) -> str:
        from steps.sim.generated_cache import spec_cache_key

        return spec_cache_key(self.suite, self.to_dict(), GENERATOR_VERSION)


def parse_libero_uri(uri: str) -> LiberoDataSpec:
    """``libero://suite=libero_spatial&tasks=0,1&episodes=4&resolution=128`` -> LiberoDataSpec."""
    from steps.sim.dataset_uri import parse_query

    kwargs = parse_query(uri, URI_SCHEME, LiberoDataSpec, text=("suite", "video_codec"))
    try:
        return LiberoDataSpec(**kwargs)
    except ValueError as exc:
        raise ValueError(f"{uri}: {exc}") from None


def libero_features(resolution: int) -> dict:
    """physical-intelligence/libero's features (images as video here) at ``resolution``."""
    image = {"dtype": "video", "shape": (resolution, resolution, 3), "names": ["height", "width", "channel"]}
    return {
        "image": image,
        "wrist_image": dict(image),
        "state": {"dtype": "float32", "shape": (8,), "names": ["state"]},
        "actions": {"dtype": "float32", "shape": (7,), "names": ["actions"]},
    }


def scripted_action(eef_pos: np.ndarray, target: np.ndarray, gripper: float) -> np.ndarray:
    """Move the end effector towards ``target`` (world frame, m), rotation held, gripper as given."""
    delta = np.clip((np.asarray(target) - np.asarray(eef_pos)) * GAIN, -1.0, 1.0)
    return np.concatenate([delta, np.zeros(3), [gripper]]).astype(np.float32)


def object_of_interest_position(env) -> np.ndarray:
    """World position of the task's first object of interest (from the BDDL), e.g. the bowl to pick."""
    rs = env.robosuite_env
    name = env._env.obj_of_interest[0]
    return np.array(rs.sim.data.body_xpos[rs.obj_body_id[name]])


def generate_demonstrations(spec: LiberoDataSpec, root: str | Path, *, log=print) -> dict:
    """Write the dataset ``spec`` describes to ``root`` (must not exist or be empty); returns the metadata
    plus "seconds"."""
    root = Path(root)
    if root.exists() and any(root.iterdir()):
        raise FileExistsError(f"{root}: output folder exists and is not empty")
    from data_adapters.lerobot_writer import LeRobotWriter
    from steps.sim.libero.env import FPS, LiberoTaskEnv

    writer = LeRobotWriter(root, fps=FPS, features=libero_features(spec.resolution), version="v3.0",
                           video_codec=spec.video_codec, robot_type=ROBOT_TYPE)  # fmt: skip
    episodes: list[dict] = []
    began = time.perf_counter()
    with writer:
        for task in spec.tasks:
            env = LiberoTaskEnv(task, resolution=spec.resolution)
            try:
                for state in range(spec.first_state, spec.first_state + spec.episodes):
                    env.reset(state, seed=state)
                    obj = object_of_interest_position(env)
                    success = False
                    for _, steps, height, gripper in SCRIPT:
                        for _ in range(steps):
                            obs = env.observe()
                            action = scripted_action(obs["state"][:3], obj + [0.0, 0.0, height], gripper)
                            frame = {**obs["images"], "state": obs["state"], "actions": action}
                            writer.add_frame(frame, task=env.prompt)
                            success = env.step(action) or success
                    writer.save_episode()
                    episodes.append({"episode_index": len(episodes), "task": task, "init_state": state,
                                     "length": sum(s for _, s, _, _ in SCRIPT), "success": bool(success)})  # fmt: skip
                log(f"[libero] {task}: {spec.episodes} episodes (initial states {spec.first_state}..{state})")
            finally:
                env.close()
    meta = {"generator": "vla-sft steps.sim.libero.demonstrations", "generator_version": GENERATOR_VERSION,
            "spec": spec.to_dict(), "versions": _versions(), "conventions": "openpi LIBERO: images rotated 180 "
            "degrees, state = eef pos + axis-angle + gripper qpos, 10 settling steps", "episodes": episodes,
            "frames": sum(e["length"] for e in episodes)}  # fmt: skip
    (root / META_FILE).write_text(json.dumps(meta, indent=1))
    return {**meta, "seconds": round(time.perf_counter() - began, 2)}


def generated_tasks(root: str | Path) -> list[str] | None:
    """The tasks a dataset made by this module was rendered from (None for any other dataset)."""
    path = Path(root) / META_FILE
    if not path.is_file():
        return None
    return list(json.loads(path.read_text())["spec"]["tasks"])


def fetch_libero(source: str | LiberoDataSpec, cache_dir: str | Path | None = None, *, log=print) -> Path:
    """The dataset a ``libero://`` URI (or spec) names, generated once per parameter set
    (``steps.sim.generated_cache``: a crash leaves nothing under the key)."""
    from steps.cache import cache_dir_for
    from steps.sim.generated_cache import generate_once

    spec = parse_libero_uri(source) if isinstance(source, str) else source
    return generate_once(cache_dir_for("libero_data", cache_dir), spec.cache_key(), META_FILE,
                         lambda folder: generate_demonstrations(spec, folder, log=log), label="libero", log=log)  # fmt: skip


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("hf-libero", "robosuite", "mujoco"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


def main(argv: Sequence[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(prog="python -m steps.sim.libero.demonstrations",
                                     description=__doc__.split("\n\n")[0])  # fmt: skip
    parser.add_argument("--suite", default=suites.DEFAULT_SUITE, choices=list(suites.SUITES))
    parser.add_argument("--tasks", default="0", help="comma-separated task names or indices within the suite")
    parser.add_argument("--episodes", type=int, default=6, help="episodes per task")
    parser.add_argument("--first-state", type=int, default=10, help="first of the task's initial states")
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--video-codec", choices=("av1", "h264"), default="av1")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--out", type=Path, help="write here (must not exist or be empty)")
    where.add_argument("--cache-dir", type=Path, help="cache root when --out is not given")
    args = parser.parse_args(argv)
    spec = LiberoDataSpec(suite=args.suite, tasks=tuple(t for t in args.tasks.split(",") if t.strip()),
                          episodes=args.episodes, first_state=args.first_state, resolution=args.resolution,
                          video_codec=args.video_codec)  # fmt: skip
    if args.out is None:
        path = fetch_libero(spec, args.cache_dir)
    else:
        meta = generate_demonstrations(spec, args.out)
        print(f"[libero] {meta['frames']} frames in {meta['seconds']} s")
        path = args.out
    print(path)
    return path


if __name__ == "__main__":
    main()
