"""ManiSkill3 demonstrations: motion-planned episodes written as a LeRobot v3.0 dataset in the pi0_maniskill schema.

For every task, seeds ``seed, seed + 1, ...`` are tried until ``episodes`` successful ones are kept (failed ones
are dropped). Each episode runs twice in a simulator worker process of the ManiSkill venv: the shipped motion planner solves
it in joint space and the plan is tracked in ``pd_ee_delta_pose`` without rendering
(``backend.ManiskillTask.demonstrate``), then the tracked actions are replayed from the same seed through the
simulator interface with the camera read before every step; the frames come back to this process, where our
writer turns them into the dataset (the writer's packages need not exist in the ManiSkill venv).

Schema (``data_adapters.maniskill.PI0_MANISKILL``), at 20 fps (ManiSkill's control rate):

- ``observation.images.top`` uint8[R, R, 3]: the task's ``base_camera`` (R = 128 by default, ManiSkill's own);
- ``observation.state`` float32[7]: TCP x, y, z (m, robot base frame), TCP rotation relative to pointing
  straight down as a rotation vector rx, ry, rz (rad), gripper opening (m, 0..0.08);
- ``actions`` float32[7]: the ``pd_ee_delta_pose`` command in [-1, 1]: dx, dy, dz (x 0.1 m), then the
  rotation (XYZ Euler angles, x -0.1 rad; norm <= 1), then the gripper (1 open, -1 closed);
- ``next.success`` bool[1] (True on the last frame only: episodes stop at the first success).

``meta/maniskill.json`` records every episode's task and seed and the control mode, so the stored actions can
be replayed (closed-loop evaluation also reads the control mode and the tasks from it).

    python -m steps.sim.maniskill.demonstrations --tasks PickCube-v1,StackCube-v1 --episodes 5 --out DIR

and from the fetch step ``maniskill://tasks=PickCube-v1&episodes=5&resolution=128`` (``fetch_maniskill``,
cached under a key of its parameters).
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

from steps.errors import UserError
from steps.sim.maniskill.tasks import CONTROL_FREQ, DATASET_CONTROL_MODE, check_task_names

URI_SCHEME = "maniskill://"
META_FILE = "meta/maniskill.json"
GENERATOR_VERSION = 1  # bump when the generated data changes for the same parameters
ROBOT_TYPE = "panda"
STATE_NAMES = ["x", "y", "z", "rx", "ry", "rz", "gripper"]
ACTION_NAMES = ["dx", "dy", "dz", "drx", "dry", "drz", "gripper"]
# Shipped for the pi05_maniskill demo. Regenerate (about 2 minutes):
#   python -m steps.sim.maniskill.demonstrations --tasks PickCube-v1 --episodes 10 --out <this folder>
DEMO_DATASET = Path(__file__).resolve().parents[3] / "data_adapters" / "demo_data" / "maniskill_demo"


class TooFewSolved(UserError):
    """The planner solved too few seeds of a task for the episodes asked (deterministic: seeded)."""

    headline = "Dataset error"


@dataclass(frozen=True)
class ManiskillDataSpec:
    """What to generate; also the cache key."""

    # ManiSkill task names, e.g. ("PickCube-v1", "StackCube-v1").
    tasks: tuple[str, ...]
    # Successful episodes kept per task.
    episodes: int = 5
    # Square camera side in pixels (ManiSkill's base_camera is 128).
    resolution: int = 128
    # First seed of every task.
    seed: int = 0
    # "video" (mp4) or "image" (PNG bytes in parquet).
    image_storage: str = "video"
    # Video codec for image_storage == "video": "av1" or "h264".
    video_codec: str = "av1"

    def __post_init__(self):
        object.__setattr__(self, "tasks", check_task_names(tuple(self.tasks)))
        for name in ("episodes", "resolution", "seed"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"{name}: expected an int, got {value!r}")
        if self.episodes < 1:
            raise ValueError(f"episodes: expected >= 1, got {self.episodes}")
        if not 16 <= self.resolution <= 1024:
            raise ValueError(f"resolution: expected 16..1024 pixels, got {self.resolution}")
        if self.seed < 0:
            raise ValueError(f"seed: expected >= 0, got {self.seed}")
        if self.image_storage not in ("video", "image"):
            raise ValueError(f"image_storage: expected 'video' or 'image', got {self.image_storage!r}")
        if self.video_codec not in ("av1", "h264"):
            raise ValueError(f"video_codec: expected 'av1' or 'h264', got {self.video_codec!r}")

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "tasks": list(self.tasks)}

    def cache_key(self) -> str:
        from steps.sim.generated_cache import spec_cache_key

        return spec_cache_key("ms", self.to_dict(), GENERATOR_VERSION)


def parse_maniskill_uri(uri: str) -> ManiskillDataSpec:
    """``maniskill://tasks=PickCube-v1,StackCube-v1&episodes=3&resolution=128`` -> ManiskillDataSpec."""
    from steps.sim.dataset_uri import parse_query

    kwargs = parse_query(uri, URI_SCHEME, ManiskillDataSpec, text=("image_storage", "video_codec"))
    if "tasks" not in kwargs:
        raise ValueError(f"{uri}: missing tasks=..., e.g. {URI_SCHEME}tasks=PickCube-v1&episodes=5")
    try:
        return ManiskillDataSpec(**kwargs)
    except ValueError as err:
        raise ValueError(f"{uri}: {err}") from None


def check_maniskill_source(uri: str, config_type) -> ManiskillDataSpec:
    """The URI parses and its dataset fits ``config_type`` (ValueError naming what does not); no simulator."""
    from data_adapters.config_types import validate_against_dataset

    spec = parse_maniskill_uri(uri)
    try:
        validate_against_dataset(
            config_type, {"features": maniskill_features(spec.resolution, spec.image_storage)}
        )
    except ValueError as err:
        raise ValueError(
            f"{uri} makes a dataset in the pi0_maniskill schema, which does not fit: {err}"
        ) from None
    return spec


def check_simulator_fit(config_type) -> None:
    """ValueError unless ``config_type`` reads what the ManiSkill simulator observes and takes its actions
    (the pi0_maniskill schema); e.g. a YAML that extends pi05_maniskill for another schema inherits
    ``simulator: maniskill`` and would otherwise fail at its first closed-loop step."""
    from data_adapters.config_types import validate_against_dataset

    try:
        validate_against_dataset(config_type, {"features": maniskill_features(128)})
    except ValueError as err:
        raise ValueError(
            f"simulator: maniskill observes observation.images.top and observation.state [7] and takes actions "
            f"[7] (pd_ee_delta_pose), which {config_type.name!r} does not fit ({err}); set 'simulator: null' in "
            "its YAML or pass --sim_episodes 0"
        ) from None


def maniskill_features(resolution: int, image_storage: str = "video") -> dict:
    from steps.sim.maniskill.sim import IMAGE_KEY

    return {
        IMAGE_KEY: {
            "dtype": image_storage,
            "shape": (resolution, resolution, 3),
            "names": ["height", "width", "channel"],
        },  # fmt: skip
        "observation.state": {"dtype": "float32", "shape": (len(STATE_NAMES),), "names": STATE_NAMES},
        "actions": {"dtype": "float32", "shape": (len(ACTION_NAMES),), "names": ACTION_NAMES},
        "next.success": {"dtype": "bool", "shape": (1,), "names": None},
    }


def generate_demonstrations(spec: ManiskillDataSpec, root: str | Path, *, log=print) -> dict:
    """Write the dataset ``spec`` describes to ``root`` (must not exist or be empty).

    Returns the content of ``meta/maniskill.json`` plus "seconds" and throughput ("episodes_per_min",
    "frames_per_s", over the whole generation including planning, failed seeds and rendering).
    """
    root = Path(root)
    if root.exists() and any(root.iterdir()):
        raise FileExistsError(f"{root}: output folder exists and is not empty")
    from data_adapters.lerobot_writer import LeRobotWriter
    from steps.sim.maniskill.sim import IMAGE_KEY, ManiskillSimulator
    from steps.sim.worker import Worker

    ManiskillSimulator.preflight()  # the venv and a Vulkan device, one line naming the fix
    writer = LeRobotWriter(root, fps=CONTROL_FREQ, features=maniskill_features(spec.resolution, spec.image_storage),
                           version="v3.0", video_codec=spec.video_codec, robot_type=ROBOT_TYPE)  # fmt: skip
    episodes: list[dict] = []
    start, frames, tried = time.perf_counter(), 0, 0
    options = {"resolution": spec.resolution, "control_mode": DATASET_CONTROL_MODE}
    sim = Worker(
        "maniskill", options, python=ManiskillSimulator.own_python(), name="maniskill-demonstrations"
    )
    try:
        with writer:  # finalizes on success, removes its temporary folder on error
            for task in spec.tasks:
                kept, seed, max_attempts = 0, spec.seed, 3 * spec.episodes + 5
                while kept < spec.episodes:
                    if seed - spec.seed >= max_attempts:
                        raise TooFewSolved(f"{task}: the motion planner succeeded on only {kept} of {max_attempts} "
                                           f"seeds from {spec.seed}; ask for fewer episodes")  # fmt: skip
                    sim.send("call", method="demonstrate", kwargs={"task": task, "seed": seed})
                    demo = sim.recv()["result"]
                    seed, tried = seed + 1, tried + 1
                    if not demo["success"]:
                        log(f"[maniskill] {task} seed {seed - 1}: not solved, skipped")
                        continue
                    frames += _write_replay(sim, writer, task, seed - 1, demo["actions"], IMAGE_KEY)
                    episodes.append({"episode_index": len(episodes), "task": task, "seed": seed - 1,
                                     "length": len(demo["actions"])})  # fmt: skip
                    kept += 1
                log(f"[maniskill] {task}: {kept} episodes (seeds {spec.seed}..{seed - 1})")
    finally:
        sim.close()
    seconds = time.perf_counter() - start
    meta = {
        "generator": "vla-sft steps.sim.maniskill.demonstrations",
        "generator_version": GENERATOR_VERSION,
        "spec": spec.to_dict(),
        "control_mode": DATASET_CONTROL_MODE,
        "camera": "base_camera",
        "versions": _versions(),
        "episodes": episodes,
        "seeds_tried": tried,
        "frames": frames,
    }
    (root / META_FILE).write_text(json.dumps(meta, indent=1))
    # Timing stays out of the file so regenerating gives the same metadata.
    return {**meta, "seconds": round(seconds, 2), "episodes_per_min": round(60 * len(episodes) / seconds, 2),
            "frames_per_s": round(frames / seconds, 2)}  # fmt: skip


def _write_replay(sim, writer, task: str, seed: int, actions: np.ndarray, image_key: str) -> int:
    """Replay ``actions`` from ``seed`` with the camera read before every step into one episode."""
    from steps.sim.maniskill.tasks import prompt

    sim.send("reset", task=task, episode=0, seed=seed)
    obs = sim.recv()["obs"]
    successes = []
    for action in actions:
        sim.send("step", action=action, observe=True)
        reply = sim.recv()
        writer.add_frame({image_key: obs["images"][image_key], "observation.state": obs["state"],
                          "actions": action, "next.success": np.array([reply["success"]])}, task=prompt(task))  # fmt: skip
        successes.append(reply["success"])
        obs = reply["obs"]
    if not successes[-1] or any(successes[:-1]):
        raise RuntimeError(f"{task} seed {seed}: the rendered replay diverged from the plan")
    writer.save_episode()
    return len(actions)


def read_generation_meta(root: str | Path) -> dict:
    path = Path(root) / META_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not a dataset made by steps.sim.maniskill.demonstrations")
    return json.loads(path.read_text())


def generated_tasks(root: str | Path) -> list[str]:
    """The tasks a generated dataset was made from, in order ([] for any other dataset)."""
    try:
        return list(read_generation_meta(root)["spec"]["tasks"])
    except FileNotFoundError:
        return []


def dataset_control_mode(root: str | Path) -> str:
    """The control mode a dataset's actions are in: a generated dataset's record, else pd_ee_delta_pose
    (pi0_maniskill's 7-d actions; RLinf's ManiSkill data are end-effector deltas too)."""
    try:
        return read_generation_meta(root)["control_mode"]
    except FileNotFoundError:
        return DATASET_CONTROL_MODE


def fetch_maniskill(
    source: str | ManiskillDataSpec, cache_dir: str | Path | None = None, *, log=print
) -> Path:
    """The dataset a ``maniskill://`` URI (or spec) names, generated once per parameter set
    (``steps.sim.generated_cache``: a crash leaves nothing under the key)."""
    from steps.cache import cache_dir_for
    from steps.sim.generated_cache import generate_once

    spec = parse_maniskill_uri(source) if isinstance(source, str) else source

    def generate(folder: Path) -> None:
        meta = generate_demonstrations(spec, folder, log=log)
        log(
            f"[maniskill] {meta['frames']} frames in {meta['seconds']} s ({meta['episodes_per_min']} episodes/min)"
        )

    return generate_once(cache_dir_for("maniskill", cache_dir), spec.cache_key(), META_FILE, generate,
                         label="maniskill", log=log)  # fmt: skip


def _versions() -> dict:
    from steps.sim.maniskill.venv import REQUIREMENTS

    return {"requirements": list(REQUIREMENTS)}


def main(argv: Sequence[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(prog="python -m steps.sim.maniskill.demonstrations",
                                     description=__doc__.split("\n\n")[0])  # fmt: skip
    parser.add_argument(
        "--tasks", required=True, help="comma-separated task names, e.g. PickCube-v1,StackCube-v1"
    )
    parser.add_argument("--episodes", type=int, default=5, help="successful episodes kept per task")
    parser.add_argument("--resolution", type=int, default=128, help="square camera side in pixels")
    parser.add_argument("--seed", type=int, default=0, help="first seed of every task")
    parser.add_argument("--image-storage", choices=("video", "image"), default="video")
    parser.add_argument("--video-codec", choices=("av1", "h264"), default="av1")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--out", type=Path, help="write here (must not exist or be empty)")
    where.add_argument("--cache-dir", type=Path, help="cache root when --out is not given")
    args = parser.parse_args(argv)
    try:
        spec = ManiskillDataSpec(tasks=tuple(t.strip() for t in args.tasks.split(",") if t.strip()),
                                 episodes=args.episodes, resolution=args.resolution, seed=args.seed,
                                 image_storage=args.image_storage, video_codec=args.video_codec)  # fmt: skip
    except ValueError as err:
        parser.error(str(err))
    if args.out is None:
        path = fetch_maniskill(spec, args.cache_dir)
    else:
        meta = generate_demonstrations(spec, args.out)
        print(f"[maniskill] {meta['frames']} frames, {len(meta['episodes'])} episodes in {meta['seconds']} s: "
              f"{meta['episodes_per_min']} episodes/min, {meta['frames_per_s']} frames/s")  # fmt: skip
        path = args.out
    print(path)
    return path


if __name__ == "__main__":
    main()
