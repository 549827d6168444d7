"""Meta-World demonstrations: scripted-expert rollouts written as a LeRobot v3.0 dataset (mt50 schema).

Each task's episodes use seeds `seed, seed + 1, ...`; an episode stops at its first success (or the
step limit) and, by default, only successful ones are kept until `episodes` per task are collected. The
dataset has lerobot/metaworld_mt50's features at a chosen resolution, and `meta/metaworld.json` records
every episode's environment and seed, so its stored actions can be replayed (`replay_episode`).

Each kept episode runs twice: once physics-only to learn whether the expert succeeds (about a
millisecond a step), then replaying the same actions with rendering (~100 ms a frame here) straight
into the writer, so failed seeds cost no rendering and no frames are buffered.

Usable as `python -m steps.metaworld_data --tasks reach-v3,push-v3 --episodes 3 --resolution 224 --out DIR`
and from the fetch step through `fetch_metaworld("metaworld://tasks=reach-v3&episodes=3&resolution=128")`,
which caches the dataset under a key of its parameters.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from steps.sim.metaworld.tasks import check_task_names, task_id

URI_SCHEME = "metaworld://"
META_FILE = "meta/metaworld.json"
GENERATOR_VERSION = 1  # bump when the generated data changes for the same parameters
ROBOT_TYPE = "metaworld"
# Shipped with the repository for the pi05_metaworld demo: 3 easy tasks x 5 expert episodes, 224², AV1.
# Regenerate: python -m steps.metaworld_data --tasks reach-v3,button-press-v3,drawer-close-v3 \
#     --episodes 5 --resolution 224 --out data_adapters/demo_data/metaworld_demo
DEMO_DATASET = Path(__file__).resolve().parents[3] / "data_adapters" / "demo_data" / "metaworld_demo"


@dataclass(frozen=True)
class MetaworldDataSpec:
    """What to generate; also the cache key."""

    # Meta-World environment names, e.g. ("reach-v3", "push-v3").
    tasks: tuple[str, ...]
    # Episodes kept per task.
    episodes: int = 5
    # Square image side in pixels (lerobot/metaworld_mt50 uses 480).
    resolution: int = 224
    # First seed of every task; later episodes use seed + 1, seed + 2, ...
    seed: int = 0
    # Step limit per episode (Meta-World truncates at 500).
    max_steps: int = 500
    # Keep episodes where the expert failed (default: drop them and try the next seed).
    keep_failed: bool = False
    # "video" (mp4) or "image" (PNG bytes in parquet, as lerobot/metaworld_mt50).
    image_storage: str = "video"
    # Video codec when image_storage == "video": "av1" (LeRobot's default) or "h264".
    video_codec: str = "av1"

    def __post_init__(self):
        object.__setattr__(self, "tasks", check_task_names(self.tasks))
        for name in ("episodes", "resolution", "seed", "max_steps"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"{name}: expected an int, got {value!r}")
        if self.episodes < 1:
            raise ValueError(f"episodes: expected >= 1, got {self.episodes}")
        if not 16 <= self.resolution <= 2048:
            raise ValueError(f"resolution: expected 16..2048 pixels, got {self.resolution}")
        if self.seed < 0:
            raise ValueError(f"seed: expected >= 0, got {self.seed}")
        if not 1 <= self.max_steps <= 500:
            raise ValueError(f"max_steps: expected 1..500 (Meta-World's limit), got {self.max_steps}")
        if self.image_storage not in ("video", "image"):
            raise ValueError(f"image_storage: expected 'video' or 'image', got {self.image_storage!r}")
        if self.video_codec not in ("av1", "h264"):
            raise ValueError(f"video_codec: expected 'av1' or 'h264', got {self.video_codec!r}")

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "tasks": list(self.tasks)}

    def cache_key(self) -> str:
        """Readable, parameter-determined folder name."""
        from steps.sim.generated_cache import spec_cache_key

        return spec_cache_key("mt", self.to_dict(), GENERATOR_VERSION)


def parse_metaworld_uri(uri: str) -> MetaworldDataSpec:
    """`metaworld://tasks=reach-v3,button-press-v3&episodes=3&resolution=128` -> MetaworldDataSpec."""
    from steps.sim.dataset_uri import parse_query

    kwargs = parse_query(
        uri, URI_SCHEME, MetaworldDataSpec, text=("image_storage", "video_codec"), flags=("keep_failed",)
    )
    if "tasks" not in kwargs:
        raise ValueError(f"{uri}: missing tasks=..., e.g. {URI_SCHEME}tasks=reach-v3,push-v3&episodes=3")
    return MetaworldDataSpec(**kwargs)


def mt50_features(resolution: int, image_storage: str = "video") -> dict:
    """lerobot/metaworld_mt50's features at `resolution` (LeRobot feature-dict layout)."""
    return {
        "observation.image": {
            "dtype": image_storage,
            "shape": (resolution, resolution, 3),
            "names": ["height", "width", "channel"],
        },
        "observation.state": {"dtype": "float32", "shape": (4,), "names": ["x", "y", "z", "gripper"]},
        "observation.environment_state": {"dtype": "float32", "shape": (39,), "names": None},
        "action": {"dtype": "float32", "shape": (4,), "names": ["x", "y", "z", "gripper"]},
        "next.reward": {"dtype": "float32", "shape": (1,), "names": None},
        "next.success": {"dtype": "bool", "shape": (1,), "names": None},
        "task_id": {"dtype": "int64", "shape": (1,), "names": None},
    }


@dataclass
class Trace:
    """One physics-only rollout: the actions taken and where the episode ended."""

    env_name: str
    seed: int
    actions: np.ndarray  # float32[T, 4]
    success: bool
    length: int


def rollout_expert(env, seed: int, max_steps: int, expert: Callable[[np.ndarray], np.ndarray]) -> Trace:
    """Run `expert` from `seed` until first success or `max_steps`; no rendering."""
    obs = env.reset(seed)
    actions, success = [], False
    for _ in range(min(max_steps, env.max_steps)):
        action = np.asarray(expert(obs), dtype=np.float32)
        actions.append(action)
        result = env.step(action)
        obs = result.obs
        if result.success:
            success = True
            break
    return Trace(env.task, seed, np.stack(actions), success, len(actions))


def replay_episode(env, seed: int, actions: np.ndarray, *, on_frame: Callable | None = None) -> list[bool]:
    """Replay stored `actions` from `seed`; returns the per-step success flags.

    `on_frame(obs_before, image_or_None, action, step_result)` sees every step (used to write frames).
    """
    obs = env.reset(seed)
    successes = []
    for action in np.asarray(actions, dtype=np.float32):
        image = env.render() if env.resolution is not None else None
        result = env.step(action)
        if on_frame is not None:
            on_frame(obs, image, action, result)
        successes.append(result.success)
        obs = result.obs
    return successes


def generate_demonstrations(spec: MetaworldDataSpec, root: str | Path, *, log=print) -> dict:
    """Write the dataset `spec` describes to `root` (must not exist or be empty).

    Returns the content of `meta/metaworld.json` plus "seconds" (generation time).
    """
    root = Path(root)
    if root.exists() and any(root.iterdir()):
        raise FileExistsError(f"{root}: output folder exists and is not empty")
    from data_adapters.lerobot_writer import LeRobotWriter
    from steps.sim.metaworld.env import FPS, IMAGE_KEY, MetaworldEnv, expert_policy

    writer = LeRobotWriter(
        root,
        fps=FPS,
        features=mt50_features(spec.resolution, spec.image_storage),
        version="v3.0",
        video_codec=spec.video_codec,
        robot_type=ROBOT_TYPE,
    )
    episodes: list[dict] = []
    start = time.perf_counter()
    frames = 0
    with writer:  # finalizes on success, removes its temporary folder on error
        for env_name in spec.tasks:
            kept, seed, max_attempts = 0, spec.seed, spec.episodes + max(5, spec.episodes)
            expert = expert_policy(env_name)
            with (
                MetaworldEnv(env_name, resolution=None) as physics,
                MetaworldEnv(env_name, resolution=spec.resolution) as renderer,
            ):
                tid = np.array([task_id(env_name)], dtype=np.int64)
                while kept < spec.episodes:
                    if seed - spec.seed >= max_attempts:
                        raise RuntimeError(
                            f"{env_name}: the scripted expert succeeded on only {kept} of {max_attempts} seeds "
                            f"from {spec.seed}; ask for fewer episodes or pass keep_failed"
                        )
                    trace = rollout_expert(physics, seed, spec.max_steps, expert)
                    seed += 1
                    if not (trace.success or spec.keep_failed):
                        log(f"[metaworld] {env_name} seed {trace.seed}: expert failed, skipped")
                        continue

                    def write(obs, image, action, result, _tid=tid, _prompt=renderer.prompt):
                        frame = {
                            IMAGE_KEY: image,
                            "observation.state": obs[:4].astype(np.float32),
                            "observation.environment_state": obs.astype(np.float32),
                            "action": action.astype(np.float32),
                            "next.reward": np.array([result.reward], dtype=np.float32),
                            "next.success": np.array([result.success], dtype=bool),
                            "task_id": _tid,
                        }
                        writer.add_frame(frame, task=_prompt)

                    replayed = replay_episode(renderer, trace.seed, trace.actions, on_frame=write)
                    if any(replayed) != trace.success or len(replayed) != trace.length:
                        raise RuntimeError(f"{env_name} seed {trace.seed}: replay diverged from the rollout")
                    writer.save_episode()
                    episodes.append(
                        {
                            "episode_index": len(episodes),
                            "env_name": env_name,
                            "seed": trace.seed,
                            "length": trace.length,
                            "success": trace.success,
                        }
                    )
                    frames += trace.length
                    kept += 1
            log(f"[metaworld] {env_name}: {kept} episodes (seeds {spec.seed}..{seed - 1})")
    meta = {
        "generator": "vla-sft steps.sim.metaworld.demonstrations",
        "generator_version": GENERATOR_VERSION,
        "spec": spec.to_dict(),
        "versions": _versions(),
        "camera": "corner4, rotated 180 degrees (lerobot/metaworld_mt50 view)",
        "episodes": episodes,
        "frames": frames,
    }
    (root / META_FILE).write_text(json.dumps(meta, indent=1))
    # Timing stays out of the file so regenerating gives the same metadata.
    return {**meta, "seconds": round(time.perf_counter() - start, 2)}


def read_generation_meta(root: str | Path) -> dict:
    """The per-episode environments and seeds of a generated dataset."""
    path = Path(root) / META_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: not a dataset made by steps.sim.metaworld.demonstrations (no {META_FILE})"
        )
    return json.loads(path.read_text())


def default_cache_dir() -> Path:
    from steps.cache import cache_dir_for

    return cache_dir_for("metaworld")


def fetch_metaworld(
    source: str | MetaworldDataSpec, cache_dir: str | Path | None = None, *, log=print
) -> Path:
    """Path of the dataset a `metaworld://` URI (or spec) names, generated once per parameter set
    (``steps.sim.generated_cache``: a crash leaves nothing under the key, concurrent callers do not clash)."""
    from steps.sim.generated_cache import generate_once

    spec = parse_metaworld_uri(source) if isinstance(source, str) else source
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return generate_once(cache, spec.cache_key(), META_FILE,
                         lambda folder: generate_demonstrations(spec, folder, log=log), label="metaworld", log=log)  # fmt: skip


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("metaworld", "mujoco"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


def main(argv: Sequence[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(
        prog="python -m steps.metaworld_data", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--tasks", required=True, help="comma-separated environment names, e.g. reach-v3,push-v3"
    )
    parser.add_argument("--episodes", type=int, default=5, help="episodes kept per task")
    parser.add_argument("--resolution", type=int, default=224, help="square image side in pixels")
    parser.add_argument("--seed", type=int, default=0, help="first seed of every task")
    parser.add_argument("--max-steps", type=int, default=500)
    parser.add_argument("--keep-failed", action="store_true", help="also keep episodes the expert failed")
    parser.add_argument("--image-storage", choices=("video", "image"), default="video")
    parser.add_argument("--video-codec", choices=("av1", "h264"), default="av1")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--out", type=Path, help="write here (must not exist or be empty)")
    where.add_argument("--cache-dir", type=Path, help="cache root when --out is not given")
    args = parser.parse_args(argv)
    spec = MetaworldDataSpec(
        tasks=tuple(t.strip() for t in args.tasks.split(",") if t.strip()),
        episodes=args.episodes,
        resolution=args.resolution,
        seed=args.seed,
        max_steps=args.max_steps,
        keep_failed=args.keep_failed,
        image_storage=args.image_storage,
        video_codec=args.video_codec,
    )
    if args.out is None:
        path = fetch_metaworld(spec, args.cache_dir)
    else:
        meta = generate_demonstrations(spec, args.out)
        print(f"[metaworld] {meta['frames']} frames in {meta['seconds']} s")
        path = args.out
    print(path)
    return path


if __name__ == "__main__":
    main()
