"""Closed-loop evaluation throughput, serial and parallel, for every simulator behind steps.sim.

    MUJOCO_GL=egl python benchmarks/bench_sim_eval.py [--simulators metaworld,libero] [--workers 0,2]
        [--policies zero,tiny] [--write]

For each simulator, policy and worker count, one ``steps.sim.rollout.run_benchmark`` call (the code path
``evaluate`` uses) over a fixed set of episodes that never succeed, so every episode runs its full step
limit: Meta-World reach-v3 + button-press-v3 x 2 episodes x 100 steps at 224² (whole chunk of 5 per
query); LIBERO libero_spatial tasks 0 and 1 x 2 episodes x 60 steps, two 128² cameras, replanning every
5 steps (openpi's rule). Policies: ``zero`` reads the images and returns zero chunks (the simulator's own
cost); ``tiny`` is the tiny pi05 model through ``steps.policy.Policy.predict`` (random weights; batched
over the environments waiting for a chunk). Reports episodes/min and where the time went: building
simulators (make), resets (LIBERO: fixed initial state + 10 settling steps), physics, rendering (summed
over workers) and the policy (in the driving process). ``--write`` appends the table to RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.policy_helpers, run as a script

import numpy as np

os.environ.setdefault("MUJOCO_GL", "egl")

from steps.sim.rollout import run_benchmark  # noqa: E402

CASES = {
    "metaworld": dict(tasks=["reach-v3", "button-press-v3"], episodes=2, max_steps=100, resolution=224,
                      replan=None, config_type="pi05_metaworld", action_dim=4, horizon=5),
    "libero": dict(tasks=["0", "1"], episodes=2, max_steps=60, resolution=128, replan=5,
                   config_type="pi05_libero", action_dim=7, horizon=10),
}  # fmt: skip


def zero_policy(action_dim: int, horizon: int):
    def policy(observations):
        for obs in observations:
            assert all(image.dtype == np.uint8 for image in obs["images"].values())
        return np.zeros((len(observations), horizon, action_dim), np.float32)

    return policy


_TINY: dict[str, object] = {}


def tiny_policy(config_type: str, folder: Path):
    """One tiny export per config type, reused across worker counts."""
    if config_type not in _TINY:
        import torch

        from steps.policy import Policy
        from tests.policy_helpers import make_tiny_export

        torch.set_num_threads(1)
        _TINY[config_type] = Policy.from_export(make_tiny_export(folder, config_type), device="cpu").predict
    return _TINY[config_type]


def measure(simulator: str, policy_name: str, workers: int, tmp: Path) -> dict:
    case = CASES[simulator]
    tasks = case["tasks"]
    if simulator == "libero":
        from steps.sim.libero.suites import check_task_names

        tasks = list(check_task_names(tasks, "libero_spatial"))
    if policy_name == "zero":
        policy = zero_policy(case["action_dim"], case["horizon"])
    else:
        policy = tiny_policy(case["config_type"], tmp / f"{simulator}-export")
    seeds = list(range(1000, 1000 + case["episodes"]))
    began = time.perf_counter()
    result = run_benchmark(simulator, policy, tasks, case["episodes"], seeds, options={"resolution": case["resolution"]},
                           max_steps=case["max_steps"], replan_steps=case["replan"], workers=workers, log=None)  # fmt: skip
    wall = time.perf_counter() - began
    assert all(o.steps == case["max_steps"] for o in result.episodes), "an episode ended early"
    timings = {f"t_{k}": v for k, v in result.timings.items()}
    return {"simulator": simulator, "policy": policy_name, "workers": workers, "episodes": len(result.episodes),
            "steps": sum(o.steps for o in result.episodes), "wall": wall, **timings}  # fmt: skip


def table(rows: list[dict]) -> str:
    head = ("| simulator | policy | workers | episodes × steps | wall (s) | episodes/min | make | reset | physics "
            "| render | policy | ms/step |")  # fmt: skip
    lines = [head, "| " + " | ".join(["---"] * 12) + " |"]
    for r in rows:
        per_step = 1000 * r["wall"] / r["steps"]
        cells = [r["simulator"], r["policy"], str(r["workers"] or "0 (in-process)"),
                 f"{r['episodes']} × {r['steps'] // r['episodes']}", f"{r['wall']:.1f}",
                 f"{60 * r['episodes'] / r['wall']:.2f}"]  # fmt: skip
        cells += [f"{r.get(f't_{k}', 0.0):.1f}" for k in ("make", "reset", "physics", "render", "policy")]
        cells.append(f"{per_step:.0f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--simulators", default="metaworld,libero")
    parser.add_argument("--workers", default="0,2", help="comma-separated worker counts (0: in-process)")
    parser.add_argument("--policies", default="zero,tiny")
    parser.add_argument("--write", action="store_true", help="append the table to benchmarks/RESULTS.md")
    args = parser.parse_args()
    rows = []
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        for simulator in args.simulators.split(","):
            for policy in args.policies.split(","):
                for workers in (int(w) for w in args.workers.split(",")):
                    row = measure(simulator, policy, workers, Path(tmp))
                    print(row, flush=True)
                    rows.append(row)
    text = table(rows)
    print(text)
    if args.write:
        from benchmarks.results_md import append_to_section

        header = (f"### {time.strftime('%Y-%m-%d')} · {os.cpu_count()}-core {platform.machine()} CPU, no GPU, "
                  f"load average {load_before:.1f} before / {os.getloadavg()[0]:.1f} after · "
                  f"MUJOCO_GL={os.environ['MUJOCO_GL']} · `python benchmarks/bench_sim_eval.py`")  # fmt: skip
        append_to_section("Closed-loop evaluation (steps.sim)", f"\n{header}\n\n{text}\n")


if __name__ == "__main__":
    main()
