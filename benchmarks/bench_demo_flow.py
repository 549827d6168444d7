"""Wall time of the demo flow (`run --demo`), per step, and how much of it is Metaflow + MLflow overhead.

    python benchmarks/bench_demo_flow.py [--runs 1] [--warm] [--nodes 1] [--append-results]

Each run is a real local run of ``flows/sft_flow.py run --demo`` in a fresh temp folder (Metaflow datastore,
MLflow sqlite database, caches): what a newcomer's first run costs, including creating the MLflow tables.
``--warm`` runs in one shared folder instead (the MLflow database and caches exist after the first run);
the first, cold run is then left out of the medians.

Accounting (per run):
- step wall: a task's created -> finished time from the Metaflow client; ``total``: the command's wall time;
- work: the core calls each step times itself (``timings`` artifact): fetch_data, compute_norm_stats, the
  torchrun call of train (process start-up, imports, training loop, export), evaluate;
- MLflow: creating/reusing the run in start, registering the model (model card, pyfunc logging, version,
  alias, eval metrics and files, close);
- Metaflow: everything else (task launch and imports, artifact persistence, cards, gaps between tasks).
Not separated: the training workers' own MLflow cost (import, store set-up, metric logging, system metrics)
is inside the torchrun call and so counted as work; until 2026-11-26 the same held for evaluate's upload of
its plots and rollout media (now done in register, counted as MLflow).
The training loop alone (steps x global batch / samples/s) is shown inside the train step.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FLOW = REPO / "flows" / "sft_flow.py"
INSPECT = """
import json
from metaflow import Flow, namespace
namespace(None)
run = Flow("SFTFlow").latest_run
steps = {}
for s in run:
    tasks = list(s)
    steps[s.id] = max((t.finished_at - t.created_at).total_seconds() for t in tasks)
end = run["end"].task.data
print("INSPECT" + json.dumps({"steps": steps, "timings": end.timings, "train": end.train_result,
                              "global_batch": end.plan["global_batch"], "ok": run.successful}))
"""
STEP_ORDER = ("start", "fetch_data", "compute_norm_stats", "train", "join", "evaluate", "register", "end")
WORK_KEYS = ("start.validate", "fetch_data", "compute_norm_stats", "train.torchrun", "evaluate")
MLFLOW_KEYS = ("start.mlflow", "register")


def metaflow_env(work: Path) -> dict:
    """This environment with a local Metaflow datastore and metadata of its own under ``work``."""
    env = dict(os.environ)
    env.update(USERNAME="dev", METAFLOW_HOME=str(work / "mfhome"), METAFLOW_DATASTORE_SYSROOT_LOCAL=str(work / "mfds"),
               METAFLOW_DEFAULT_DATASTORE="local", METAFLOW_DEFAULT_METADATA="local")  # fmt: skip
    return env


def one_run(work: Path, cache: Path, nodes: int) -> dict:
    env = metaflow_env(work)
    env.pop("MLFLOW_RUN_ID", None)
    env.update(MLFLOW_TRACKING_URI=f"sqlite:///{work / 'mlflow.db'}", VLA_SFT_CACHE=str(cache))
    cmd = [
        sys.executable,
        str(FLOW),
        "--config-value",
        "cluster",
        json.dumps({"nodes": nodes}),
        "run",
        "--demo",
    ]
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True)
    total = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"demo run failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    out = subprocess.run([sys.executable, "-c", INSPECT], cwd=work, env=env, capture_output=True, text=True)
    info = json.loads(next(x for x in out.stdout.splitlines() if x.startswith("INSPECT"))[len("INSPECT") :])
    t, train = info["timings"], info["train"]
    steps_run = train["final_step"] - (train["resumed_from"] or 0)
    loop_s = (
        steps_run * info["global_batch"] / train["samples_per_s"] if train["samples_per_s"] else float("nan")
    )
    work_s = sum(t.get(k, 0.0) for k in WORK_KEYS)
    mlflow_s = sum(t.get(k, 0.0) for k in MLFLOW_KEYS)
    return {
        "total": total,
        "steps": info["steps"],
        "timings": t,
        "train_loop": loop_s,
        "work": work_s,
        "mlflow": mlflow_s,
        "metaflow": total - work_s - mlflow_s,
        "load": (load_before + os.getloadavg()[0]) / 2,
    }


def summarize(runs: list[dict]) -> str:
    med = statistics.median
    lines = ["| step | wall s (median) | core work s |", "| --- | ---: | ---: |"]
    for name in STEP_ORDER:
        core = [sum(v for k, v in r["timings"].items() if k.split(".")[0] == name) for r in runs]
        lines.append(f"| {name} | {med(r['steps'].get(name, 0.0) for r in runs):.1f} | {med(core):.1f} |")
    total = med(r["total"] for r in runs)
    lines.append(f"| **total (command)** | **{total:.1f}** | |")
    lines.append("")
    lines.append(f"- training loop inside train: {med(r['train_loop'] for r in runs):.1f} s; torchrun call "
                 f"(start-up + imports + loop + export): {med(r['timings']['train.torchrun'] for r in runs):.1f} s")  # fmt: skip
    for key, label in (("work", "work"), ("mlflow", "MLflow"), ("metaflow", "Metaflow")):
        value = med(r[key] for r in runs)
        lines.append(f"- {label}: {value:.1f} s ({100 * value / total:.0f}% of the wall time)")
    over = med((r["mlflow"] + r["metaflow"]) / r["total"] for r in runs)
    lines.append(f"- Metaflow + MLflow overhead: {100 * over:.0f}% (target <= 15%); target wall <= 600 s")
    lines.append(f"- mean 1-min load average during the runs: {med(r['load'] for r in runs):.1f} (2 cores)")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--nodes", type=int, default=1)
    parser.add_argument(
        "--warm",
        action="store_true",
        help="one shared folder (MLflow DB, caches); the cold first run is left out",
    )
    parser.add_argument("--append-results", action="store_true", help="append to benchmarks/RESULTS.md")
    args = parser.parse_args()
    runs = []
    with tempfile.TemporaryDirectory(prefix="bench-demo-") as tmp:
        for i in range(args.runs + (1 if args.warm else 0)):
            work = Path(tmp) / ("shared" if args.warm else f"run{i}")
            work.mkdir(exist_ok=True)
            runs.append(one_run(work, work / "cache", args.nodes))
            print(json.dumps({k: v for k, v in runs[-1].items()}, indent=1), file=sys.stderr)
    cold = runs[0]
    if args.warm:
        runs = runs[1:]
    table = summarize(runs)
    if args.warm:
        table += f"\n- the cold first run in the same folder (not in the medians) took {cold['total']:.1f} s"
    command = f"python benchmarks/bench_demo_flow.py --runs {args.runs} --nodes {args.nodes}" + (
        " --warm" if args.warm else ""
    )
    text = (f"\n### {date.today()} · 2-core CPU, no GPU · `{command}`\n\n"
            f"`run --demo` (pi05_metaworld, tiny model, shipped Meta-World demos, {args.nodes} node(s)), "
            f"{'warm: MLflow DB and caches reused' if args.warm else 'cold: fresh MLflow DB, datastore and caches'}"
            f", {args.runs} run(s), medians.\n\n{table}\n")  # fmt: skip
    print(text)
    if args.append_results:
        from results_md import append_to_section  # benchmarks/ is on sys.path when run as a script

        append_to_section("Demo flow", text)


if __name__ == "__main__":
    main()
