"""Training throughput of the tiny model on CPU: 1 process vs 2-process gloo DDP, and data-wait share.

Each configuration is a real ``steps.train.trainer`` run (subprocess, torchrun for DDP) on a generated
pi05_metaworld-schema dataset; per-step times come from the run's metrics file, the first step
(warm-up, worker start) left out. Prints a Markdown table; ``--append`` adds it to RESULTS.md under
``## Training``.

    python benchmarks/bench_train.py [--steps 6] [--global_batch 4] [--append]

On a GPU machine, ``--device cuda --variant real --pretrained ...`` measures the real model the same
way (not run here: no GPU on the development machine).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def make_assets(base: Path, config_type: str) -> dict:
    import numpy as np

    from data_adapters.lerobot_reader import read_numeric
    from data_adapters.normalization import NormStats, Stats
    from data_adapters.registry import get_config_type
    from data_adapters.synthetic import make_synthetic_dataset
    from data_adapters.tokenizer import train_tiny_tokenizer

    ct = get_config_type(config_type)
    root = make_synthetic_dataset(base / "ds", ct, num_episodes=4, min_len=20, max_len=30, image_size=64)
    tok = train_tiny_tokenizer(base / "tok.model")

    def stats(x):
        return Stats(mean=x.mean(0), std=x.std(0), q01=np.quantile(x, 0.01, 0), q99=np.quantile(x, 0.99, 0))

    s = np.concatenate(list(read_numeric(root, ct.state_keys).values()))
    a = np.concatenate(list(read_numeric(root, ct.action_keys).values()))
    norm = NormStats(state=stats(s), actions=stats(a), metadata={}).save(base / "norm_stats.json")
    return {"root": str(root), "tok": str(tok), "norm": str(norm)}


def run(
    name: str, base: Path, assets: dict, args, *, procs: int, num_workers: int, threads: int | None = None
) -> dict:
    from steps.train.config import TrainConfig

    out = base / f"run{len(list(base.glob('run*')))}"
    cfg = TrainConfig(
        config_type=args.config_type, dataset_root=assets["root"], norm_stats_path=assets["norm"],
        tokenizer_path=assets["tok"], model_variant=args.variant, global_batch=args.global_batch,
        max_steps=args.steps, warmup_steps=0, save_every=args.steps, val_every=0, num_workers=num_workers,
        checkpoint_dir=str(out / "ckpt"), metrics_file=str(out / "metrics.jsonl"), log_every=args.steps,
        device=args.device, augment=True,
    )  # fmt: skip
    out.mkdir(parents=True)
    cfg.to_json(out / "cfg.json")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    # torch's intra-op threads per process: by default all cores for one process (torch's own default) and
    # cores / processes under torchrun.
    threads = threads or max(1, (os.cpu_count() or 1) // procs)
    env["OMP_NUM_THREADS"] = str(threads)
    if procs > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}"]
    else:
        cmd = [sys.executable]
    cmd += ["-m", "steps.train", "--config", str(out / "cfg.json")]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_s = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    if proc.returncode:
        raise RuntimeError(f"{name} failed:\n{proc.stderr[-3000:]}")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()][1:]
    step = statistics.median(r["perf/step_time_s"] for r in rows)
    wait = statistics.median(r["perf/data_wait_s"] / r["perf/step_time_s"] for r in rows)
    return {"name": name, "procs": procs, "workers": num_workers, "step_s": step,
            "samples_per_s": args.global_batch / step, "data_wait": wait, "cpu_s": cpu_s}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--global_batch", type=int, default=4)
    parser.add_argument("--config_type", default="pi05_metaworld")
    parser.add_argument("--variant", default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--append", action="store_true", help="append the table to benchmarks/RESULTS.md")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        base = Path(tmp)
        assets = make_assets(base, args.config_type)
        load_before = os.getloadavg()[0]
        cores = os.cpu_count() or 1
        results = [
            run(f"1 process, {cores} threads, 0 workers", base, assets, args, procs=1, num_workers=0),
            run(f"1 process, {cores} threads, 2 workers", base, assets, args, procs=1, num_workers=2),
            run("1 process, 1 thread, 2 workers", base, assets, args, procs=1, num_workers=2, threads=1),
            run("2-process DDP (gloo), 1 thread + 1 worker each", base, assets, args, procs=2, num_workers=1),
        ]
        load_after = os.getloadavg()[0]
    single = results[1]["samples_per_s"]  # the default: one process, torch's threads, 2 loader workers
    lines = [
        f"### {datetime.date.today()}: tiny {args.config_type}, global batch {args.global_batch}, {args.steps} steps "
        f"(median of steps 2..{args.steps})",
        "",
        f"Machine: {os.cpu_count()}-core CPU, no GPU ({platform.machine()}), shared with other jobs: load average "
        f"{load_before:.1f} before, {load_after:.1f} after. Command: `python benchmarks/bench_train.py "
        f"--steps {args.steps} --global_batch {args.global_batch}`.",
        "",
        "| run | step time (s) | samples/s | vs default (row 2) | data wait / step time | CPU-s, whole run |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        lines.append(f"| {r['name']} | {r['step_s']:.2f} | {r['samples_per_s']:.2f} | "
                     f"{r['samples_per_s'] / single:.2f}x | {r['data_wait']:.1%} | {r['cpu_s']:.0f} |")  # fmt: skip
    table = "\n".join(lines) + "\n"
    print(table)
    if args.append:
        from results_md import append_to_section  # benchmarks/ is on sys.path when run as a script

        append_to_section("Training", "\n" + table)


if __name__ == "__main__":
    main()
