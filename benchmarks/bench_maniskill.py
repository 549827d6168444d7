"""ManiSkill3 throughput: demonstration generation and closed-loop evaluation (results in RESULTS.md).

    python benchmarks/bench_maniskill.py --episodes 4 --eval-episodes 4

- generation: ``generate_demonstrations`` for PickCube-v1 at 128² (planning, tracking, the rendered replay,
  AV1 encoding, the v3.0 write; the worker's start-up included): episodes/min and frames/s;
- evaluation: the one rollout loop (``run_benchmark``) in worker processes of the ManiSkill venv with
  (a) the stored actions replayed and no camera reads, (b) a policy that reads the 128² image at every step
  (chunks of 1, so one render per step), and (c) the tiny pi05_maniskill ``Policy.predict`` (random weights,
  chunks of 10, one render per query): episodes/min and steps/s. Worker start-up is included.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _run(policy, episodes, seeds, *, resolution, max_steps, workers, on_start=None) -> dict:
    from steps.sim.rollout import run_benchmark

    began = time.perf_counter()
    result = run_benchmark("maniskill", policy, ["PickCube-v1"], episodes, seeds,
                           options={"resolution": resolution}, max_steps=max_steps, workers=workers,
                           on_episode_start=on_start, log=None)  # fmt: skip
    seconds = time.perf_counter() - began
    steps = sum(o.steps for o in result.episodes)
    return {"episodes": len(result.episodes), "steps": steps, "seconds": round(seconds, 1),
            "episodes_per_min": round(60 * len(result.episodes) / seconds, 2),
            "steps_per_s": round(steps / seconds, 1), "success_rate": result.success_rate,
            "timings": result.timings}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--episodes", type=int, default=4, help="generated episodes")
    parser.add_argument("--eval-episodes", type=int, default=4)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    from steps.sim.maniskill import demonstrations as ms_data

    out: dict = {"load_before": os.getloadavg()[0]}
    with tempfile.TemporaryDirectory() as tmp:
        spec = ms_data.ManiskillDataSpec(tasks=("PickCube-v1",), episodes=args.episodes)
        meta = ms_data.generate_demonstrations(spec, Path(tmp) / "ds", log=lambda _: None)
        out["generation"] = {k: meta[k] for k in ("seconds", "episodes_per_min", "frames_per_s", "frames")}
        out["generation"]["seeds_tried"] = meta["seeds_tried"]

    from data_adapters.lerobot_reader import read_numeric

    gen = ms_data.read_generation_meta(ms_data.DEMO_DATASET)
    numeric = read_numeric(ms_data.DEMO_DATASET, ["actions"])
    eps = gen["episodes"][: args.eval_episodes]
    queue: list = []

    def replay(observations):
        return [queue.pop(0) if queue else np.zeros((1, 7), np.float32) for _ in observations]

    def start():
        queue.append(numeric[eps[start.n]["episode_index"]])
        start.n += 1

    start.n = 0
    seeds = [e["seed"] for e in eps]
    out["eval_replay_no_camera"] = _run(replay, len(eps), seeds, resolution=None, max_steps=200,
                                        workers=1, on_start=start)  # fmt: skip

    def looks(observations):
        return [
            np.zeros((1, 7), np.float32) + 0 * o["images"]["observation.images.top"].mean()
            for o in observations
        ]

    out["eval_image_every_step"] = _run(looks, args.eval_episodes, list(range(1000, 1000 + args.eval_episodes)),
                                        resolution=128, max_steps=50, workers=args.workers)  # fmt: skip

    from steps.policy import Policy
    from tests.policy_helpers import make_tiny_export

    with tempfile.TemporaryDirectory() as tmp:
        policy = Policy.from_export(make_tiny_export(Path(tmp), "pi05_maniskill"))
        out["eval_tiny_policy"] = _run(policy.predict, args.eval_episodes,
                                       list(range(1000, 1000 + args.eval_episodes)), resolution=128,
                                       max_steps=50, workers=args.workers)  # fmt: skip
    out["load_after"] = os.getloadavg()[0]
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
