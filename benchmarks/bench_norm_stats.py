"""Normalization statistics: this step vs the openpi-style pipeline vs the floor, on the same data.

    python benchmarks/bench_norm_stats.py                      # 1,000,000 frames, H=50, LIBERO-like
    python benchmarks/bench_norm_stats.py --frames 100000 --repeats 3 --subsample 2000   # quick

Data: a numeric-only LeRobot v3.0 dataset written with our LeRobotWriter (state [8], actions [7],
episodes of 100-220 frames, smooth random walks), config type pi0_libero (horizon 50, delta actions on
6 dims). Generated once into --data_dir and reused. All episodes are used (N = --frames).

(a) this step: ``steps.stats.norm_stats.compute_norm_stats`` (exact quantiles), without and with the cache.
(b) openpi-style: running statistics (mean, mean of squares, min/max, 5000-bin histograms re-binned as
    the range grows, as openpi's ``RunningStats``) updated per batch of 32 items from a torch DataLoader
    (no workers) over a per-sample pipeline, then the delta transform. Two per-sample pipelines:
    - (b) ``lerobot``: what openpi's ``scripts/compute_norm_stats.py`` builds, LeRobot's
      ``LeRobotDataset`` with ``delta_timestamps`` for the action chunk (LeRobot 0.4.4, run by the
      LeRobot venv's python; skipped with a message when that venv is missing);
    - (b-ours): our own ``LeRobotFrames.__getitem__`` (chunk gathering), far faster per item than
      LeRobot's (RESULTS.md), so the same recipe over it is a stricter stand-in for the openpi-style cost.
    Timed on --subsample (--lerobot-subsample) random items and extrapolated linearly to N items (plus
    the dataset's full set-up time). Numeric-only data (no image decoding) makes both lower bounds of
    what openpi's script costs on a real dataset with cameras.
(c) floor: pyarrow reads the same columns, then one numpy pass over the expanded N x H x D chunk
    values (gather + delta + sum, in blocks of 20k frames).

Each measurement runs in a fresh subprocess (peak RSS is the child's VmHWM). Each of --repeats
rounds runs (a), (b), (b-ours) and (c) back to back (order rotated); ratios are the medians of the per-round
ratios, so a change in machine load between rounds does not skew them. Wall and CPU time (``time.process_time``) are both
reported: on a machine shared with other jobs, wall time mostly measures the wait for a core.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CONFIG_TYPE = "pi0_libero"
STATE_KEY, ACTION_KEY = "state", "actions"
# pi0_libero's horizon and delta mask, spelled out for the LeRobot venv's child (which runs none of our
# code); the (b-ours) child checks them against the config type.
HORIZON = 50
DELTA_MASK = (True, True, True, True, True, True, False)


def generate(root: Path, frames: int, seed: int = 0) -> None:
    from data_adapters.lerobot_writer import LeRobotWriter

    rng = np.random.default_rng(seed)
    features = {STATE_KEY: {"dtype": "float32", "shape": (8,), "names": None},
                ACTION_KEY: {"dtype": "float32", "shape": (7,), "names": None}}  # fmt: skip
    done = 0
    with LeRobotWriter(root, fps=10, features=features) as writer:
        while done < frames:
            length = min(int(rng.integers(100, 221)), frames - done)
            state = rng.uniform(-1, 1, 8) + np.cumsum(rng.normal(0, 0.02, (length, 8)), axis=0)
            actions = np.concatenate([state[:, :6] + rng.normal(0, 0.01, (length, 6)),
                                      np.sign(rng.normal(size=(length, 1)))], axis=1)  # fmt: skip
            state, actions = state.astype(np.float32), actions.astype(np.float32)
            for t in range(length):
                writer.add_frame({STATE_KEY: state[t], ACTION_KEY: actions[t]}, task="benchmark")
            writer.save_episode()
            done += length


# -- the three methods (run in a child process each) ---------------------------------------------------


def run_step(root: Path) -> dict:
    from steps.stats.norm_stats import compute_norm_stats

    with tempfile.TemporaryDirectory() as cache:
        start, cpu = time.perf_counter(), time.process_time()
        stats = compute_norm_stats(CONFIG_TYPE, root, None, cache_dir=cache, use_cache=False)
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
        start = time.perf_counter()
        compute_norm_stats(CONFIG_TYPE, root, None, cache_dir=cache)
        cached = time.perf_counter() - start
    return {"seconds": seconds, "cpu_seconds": cpu, "cached_seconds": cached, "passes": stats.metadata["passes"],
            "q99_actions": stats.actions.q99.tolist()}  # fmt: skip


class RunningStats:
    """openpi-style running statistics: moments, min/max, and per-dim histograms re-binned on growth."""

    def __init__(self, bins: int = 5000):
        self.bins, self.count = bins, 0

    def update(self, batch: np.ndarray) -> None:
        lo, hi = batch.min(axis=0), batch.max(axis=0)
        if self.count == 0:
            self.mean, self.mean_sq = np.zeros(batch.shape[1]), np.zeros(batch.shape[1])
            self.lo, self.hi = lo, hi
            self.edges = [np.linspace(a, b, self.bins + 1) for a, b in zip(lo, hi)]
            self.hist = [np.zeros(self.bins) for _ in lo]
        elif (lo < self.lo).any() or (hi > self.hi).any():
            self.lo, self.hi = np.minimum(lo, self.lo), np.maximum(hi, self.hi)
            for d in range(len(self.hist)):  # move the old counts onto the wider bins
                centres = (self.edges[d][:-1] + self.edges[d][1:]) / 2
                self.edges[d] = np.linspace(self.lo[d], self.hi[d], self.bins + 1)
                self.hist[d] = np.histogram(centres, self.edges[d], weights=self.hist[d])[0]
        n = len(batch)
        self.mean += (batch.mean(axis=0) - self.mean) * n / (self.count + n)
        self.mean_sq += ((batch**2).mean(axis=0) - self.mean_sq) * n / (self.count + n)
        self.count += n
        for d in range(batch.shape[1]):
            self.hist[d] += np.histogram(batch[:, d], self.edges[d])[0]


class _DeltaActions:
    """The per-sample pipeline: a dataset item, then the delta transform (as openpi's transforms)."""

    def __init__(self, frames, mask: np.ndarray):
        self.frames, self.mask = frames, mask

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, i: int) -> dict:
        item = self.frames[i]
        # np.array copies: LeRobot items are torch tensors, ours numpy arrays.
        state, actions = np.array(item[STATE_KEY]), np.array(item[ACTION_KEY])
        actions[:, self.mask] -= state[: len(self.mask)][self.mask]
        return {"state": state, "actions": actions}


def _our_frames(root: Path):
    from data_adapters.lerobot_reader import LeRobotFrames
    from data_adapters.registry import get_config_type

    cfg = get_config_type(CONFIG_TYPE)
    if cfg.action_horizon != HORIZON or tuple(cfg.delta_mask) != DELTA_MASK:
        raise RuntimeError(f"HORIZON / DELTA_MASK no longer match config type {CONFIG_TYPE}")
    return LeRobotFrames(root, state_keys=cfg.state_keys, action_keys=cfg.action_keys, camera_keys=[],
                         horizon=cfg.action_horizon)  # fmt: skip


def _lerobot_frames(root: Path):
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    fps = json.loads((root / "meta/info.json").read_text())["fps"]
    # openpi's create_torch_dataset: one delta timestamp per step of the action horizon.
    dataset = LeRobotDataset("bench/norm_stats", root=root,
                             delta_timestamps={ACTION_KEY: [k / fps for k in range(HORIZON)]})  # fmt: skip
    dataset[0]  # LeRobot loads its frame table lazily: count that as set-up
    return dataset


def run_openpi_style(root: Path, subsample: int, pipeline: str) -> dict:
    import torch

    torch.set_num_threads(1)
    start, cpu = time.perf_counter(), time.process_time()
    frames = _lerobot_frames(root) if pipeline == "lerobot" else _our_frames(root)
    setup, setup_cpu = time.perf_counter() - start, time.process_time() - cpu
    dataset = _DeltaActions(frames, np.asarray(DELTA_MASK))
    order = np.random.default_rng(0).choice(len(frames), size=min(subsample, len(frames)), replace=False)
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, order.tolist()), batch_size=32)
    state_stats, action_stats = RunningStats(), RunningStats()
    start, cpu = time.perf_counter(), time.process_time()
    for batch in loader:  # openpi: stats[key].update(np.asarray(batch[key])) for state and actions
        state_stats.update(np.asarray(batch["state"]).reshape(-1, batch["state"].shape[-1]))
        action_stats.update(np.asarray(batch["actions"]).reshape(-1, batch["actions"].shape[-1]))
    per_item = (time.perf_counter() - start) / len(order)
    per_item_cpu = (time.process_time() - cpu) / len(order)
    return {"seconds": setup + per_item * len(frames), "cpu_seconds": setup_cpu + per_item_cpu * len(frames),
            "setup_seconds": setup, "items_timed": len(order), "items_per_second": 1 / per_item,
            "extrapolated": True}  # fmt: skip


def run_floor(root: Path, horizon: int = 50, block: int = 20_000) -> dict:
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from data_adapters.registry import get_config_type

    start, cpu = time.perf_counter(), time.process_time()
    states, actions, episodes = [], [], []
    for path in sorted((root / "data").glob("chunk-*/file-*.parquet")):
        table = pq.ParquetFile(path).read(columns=[STATE_KEY, ACTION_KEY, "episode_index"])
        states.append(pc.list_flatten(table.column(STATE_KEY).combine_chunks()).to_numpy().reshape(-1, 8))
        actions.append(pc.list_flatten(table.column(ACTION_KEY).combine_chunks()).to_numpy().reshape(-1, 7))
        episodes.append(table.column("episode_index").to_numpy())
    state = np.concatenate(states).astype(np.float64)
    act = np.concatenate(actions).astype(np.float64)
    episode = np.concatenate(episodes)
    read = time.perf_counter() - start
    n = len(state)
    last = np.flatnonzero(np.r_[episode[1:] != episode[:-1], True])  # each episode's last row
    last_of_row = np.repeat(last, np.diff(np.r_[-1, last]))
    delta_state = state[:, :7] * np.asarray(get_config_type(CONFIG_TYPE).delta_mask, dtype=np.float64)
    total = np.zeros(7)
    for begin in range(0, n, block):
        rows = np.arange(begin, min(begin + block, n))
        index = np.minimum(rows[:, None] + np.arange(horizon), last_of_row[rows, None])
        chunk = act[index]  # [n, H, 7]
        np.subtract(chunk, delta_state[rows, None, :], out=chunk)
        total += chunk.sum(axis=(0, 1))
    return {"seconds": time.perf_counter() - start, "cpu_seconds": time.process_time() - cpu, "read_seconds": read,
            "checksum": total.tolist()}  # fmt: skip


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM; ru_maxrss would carry the parent's peak over exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


METHODS = ("a", "b_lerobot", "b_ours", "c")


def child(method: str, root: Path, subsample: int) -> None:
    baseline = peak_rss_mb()
    if method == "a":
        out = run_step(root)
    elif method == "b_lerobot":
        out = run_openpi_style(root, subsample, "lerobot")
    elif method == "b_ours":
        out = run_openpi_style(root, subsample, "ours")
    else:
        out = run_floor(root)
    out["peak_rss_mb"] = peak_rss_mb()
    out["rss_before_mb"] = baseline
    print(json.dumps(out))


# Modules each child imports before timing (torch only where the method needs it; pandas because
# pyarrow loads it lazily when a parquet file carries pandas metadata).
PRELOAD = {
    "a": "import steps.stats.norm_stats, steps.stats.chunk_stats, steps.fetch.dataset, data_adapters.lerobot_format",
    "b_lerobot": "import torch, lerobot.datasets.lerobot_dataset",
    "b_ours": "import torch, data_adapters.lerobot_reader",
    "c": "import data_adapters.config_types",
}


def measure(method: str, python: str, root: Path, subsample: int) -> dict:
    code = (
        f"import sys; sys.path.insert(0, {str(REPO)!r}); import pyarrow.parquet, pandas; {PRELOAD[method]}; "
        f"import benchmarks.bench_norm_stats as b; from pathlib import Path; "
        f"b.child({method!r}, Path({str(root)!r}), {subsample})"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([python, "-c", code], capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"method {method} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    from benchmarks.lerobot_venv import lerobot_python

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=1_000_000)
    parser.add_argument("--data_dir", default="/tmp/vla-sft-bench")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--subsample", type=int, default=5_000, help="items timed for (b-ours), per repeat")
    parser.add_argument("--lerobot-subsample", type=int, default=2_000,
                        help="items timed for (b) on LeRobot, per repeat (far slower per item)")  # fmt: skip
    parser.add_argument("--lerobot-python", default=None, help="default: the LeRobot venv's python")
    args = parser.parse_args()
    root = Path(args.data_dir) / f"norm_stats_numeric_{args.frames}"
    if not root.exists():
        start = time.perf_counter()
        generate(root, args.frames)
        print(f"generated {root} in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    python = {m: sys.executable for m in METHODS}
    python["b_lerobot"] = lerobot_python(args.lerobot_python)
    methods = METHODS
    if not Path(python["b_lerobot"]).exists():
        print(f"no LeRobot venv at {python['b_lerobot']}: (b) on LeRobot skipped", file=sys.stderr)
        methods = tuple(m for m in METHODS if m != "b_lerobot")
    subsample = {m: args.lerobot_subsample if m == "b_lerobot" else args.subsample for m in methods}
    # Every repeat runs all methods back to back (order rotated), so each repeat gives paired ratios
    # measured under the same load; the medians of those ratios are what we report.
    runs: dict[str, list[dict]] = {m: [] for m in methods}
    for repeat in range(args.repeats):
        shift = repeat % len(methods)
        for method in methods[shift:] + methods[:shift]:
            runs[method].append(measure(method, python[method], root, subsample[method]))
            shown = {k: v for k, v in runs[method][-1].items() if k not in ("q99_actions", "checksum")}
            print(method, json.dumps(shown), file=sys.stderr)

    def median(method: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[method])

    def ratio(top: str, bottom: str, key: str) -> float:
        return round(statistics.median(t[key] / b[key] for t, b in zip(runs[top], runs[bottom])), 2)

    openpi = [m for m in ("b_lerobot", "b_ours") if m in runs]
    summary = {
        "frames": args.frames,
        "repeats": args.repeats,
        "seconds": {m: [round(r["seconds"], 2) for r in runs[m]] for m in methods},
        "cpu_seconds": {m: [round(r["cpu_seconds"], 2) for r in runs[m]] for m in methods},
        "median_seconds": {m: round(median(m, "seconds"), 2) for m in methods},
        "median_cpu_seconds": {m: round(median(m, "cpu_seconds"), 2) for m in methods},
        **{
            f"{m}_over_a": {"wall": ratio(m, "a", "seconds"), "cpu": ratio(m, "a", "cpu_seconds")}
            for m in openpi
        },
        "a_over_c": {"wall": ratio("a", "c", "seconds"), "cpu": ratio("a", "c", "cpu_seconds")},
        "a_cached_median_seconds": round(median("a", "cached_seconds"), 4),
        "a_passes": runs["a"][0]["passes"],
        "peak_rss_mb": {m: round(max(r["peak_rss_mb"] for r in runs[m])) for m in methods},
        "rss_before_mb": {m: round(min(r["rss_before_mb"] for r in runs[m])) for m in methods},
        **{f"{m}_items_timed_per_repeat": runs[m][0]["items_timed"] for m in openpi},
        **{f"{m}_items_per_second_median": round(median(m, "items_per_second")) for m in openpi},
        **{f"{m}_setup_seconds_median": round(median(m, "setup_seconds"), 2) for m in openpi},
        "c_read_seconds_median": round(median("c", "read_seconds"), 2),
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
    }
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
