"""Meta-World throughput: rendering, demonstration generation, closed-loop evaluation.

    MUJOCO_GL=egl python benchmarks/bench_metaworld.py [--repeats 3] [--tasks reach-v3,button-press-v3]

Measures (medians over --repeats):
- render ms per frame at 224² and 480² (mt50 camera, 1024 shadow map),
- generation frames/s end to end (expert rollout + replay with rendering + AV1 encoding + v3.0 write),
- evaluation episodes/min with a trivial image-reading policy (chunks of 5, replan every 5, 150 steps,
  never succeeds so every episode runs the full 150 steps), the same without rendering, and with the
  tiny pi05_metaworld inference policy (steps.policy.Policy.predict, random weights).
Prints a markdown table for benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.policy_helpers, run as a script

import numpy as np

from steps.sim.metaworld.env import configure_headless_gl

configure_headless_gl()

from steps.evaluate import closed_loop as sim_eval  # noqa: E402
from steps.sim.metaworld import demonstrations as metaworld_data  # noqa: E402
from steps.sim.metaworld.env import MetaworldEnv  # noqa: E402


class TrivialImagePolicy:
    """Looks at the image (so frames are rendered) and holds still: zero actions, chunks of 5."""

    uses_images = True

    def __call__(self, obs: dict) -> np.ndarray:
        _ = obs["images"]["observation.image"].mean()
        return np.zeros((5, 4), np.float32)


class TrivialBlindPolicy(TrivialImagePolicy):
    uses_images = False

    def __call__(self, obs: dict) -> np.ndarray:
        return np.zeros((5, 4), np.float32)


def tiny_policy():
    """steps.policy.Policy around a random tiny pi05_metaworld model (the registered-model code path)."""
    import torch

    from steps.policy import Policy
    from tests.policy_helpers import make_tiny_export

    torch.set_num_threads(1)
    export = make_tiny_export(Path(tempfile.mkdtemp(prefix="bench-mw-policy-")), "pi05_metaworld")
    return Policy.from_export(export, device="cpu").predict


def render_ms(resolution: int, frames: int = 20) -> float:
    with MetaworldEnv("button-press-v3", resolution=resolution) as env:
        env.reset(0)
        env.render()  # first frame builds GL state
        times = []
        for _ in range(frames):
            t = time.perf_counter()
            env.render()
            times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


def generation_fps(tasks: tuple[str, ...], resolution: int, episodes: int) -> tuple[float, int]:
    spec = metaworld_data.MetaworldDataSpec(tasks=tasks, episodes=episodes, resolution=resolution)
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        meta = metaworld_data.generate_demonstrations(spec, Path(tmp) / "ds", log=lambda *_: None)
        seconds = time.perf_counter() - t
    return meta["frames"] / seconds, meta["frames"]


def eval_episodes_per_min(policy, tasks: tuple[str, ...], episodes: int, resolution: int) -> float:
    t = time.perf_counter()
    result = sim_eval.evaluate_metaworld(
        policy, tasks, episodes, seeds=0, max_steps=150, replan_every=5, resolution=resolution, log=None
    )
    return 60 * len(result.episodes) / (time.perf_counter() - t)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tasks", default="reach-v3,button-press-v3")
    parser.add_argument("--episodes", type=int, default=1, help="generation episodes per task")
    args = parser.parse_args()
    tasks = tuple(args.tasks.split(","))
    print("| measure | median |\n| --- | --- |", flush=True)

    def report(name: str, value: float) -> None:
        print(f"| {name} | {value:.3g} |", flush=True)

    def med(fn, *a):
        values = [fn(*a) for _ in range(args.repeats)]
        return statistics.median(v[0] if isinstance(v, tuple) else v for v in values), values

    for res in (224, 480):
        ms, _ = med(render_ms, res)
        report(f"render {res}² (ms/frame)", ms)
    for res in (224, 480):
        fps, values = med(generation_fps, tasks, res, args.episodes)
        report(f"generation {res}² (frames/s, {values[0][1]} frames)", fps)
    per_min, _ = med(eval_episodes_per_min, TrivialImagePolicy(), tasks, 2, 224)
    report("evaluation, trivial image policy, 224², 150 steps (episodes/min)", per_min)
    per_min, _ = med(eval_episodes_per_min, TrivialBlindPolicy(), tasks, 2, 224)
    report("evaluation, no rendering, 150 steps (episodes/min)", per_min)
    per_min, _ = med(eval_episodes_per_min, tiny_policy(), tasks, 2, 224)
    report("evaluation, tiny pi05_metaworld Policy.predict, 224², 150 steps (episodes/min)", per_min)


if __name__ == "__main__":
    main()
