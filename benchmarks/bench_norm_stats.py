"""Normalization statistics: this step vs the openpi-style pipeline vs the floor, on the same data.

    python benchmarks/bench_norm_stats.py                      # 1,000,000 frames, H=50, LIBERO-like
    python benchmarks/bench_norm_stats.py --frames 100000 --repeats 3 --subsample 2000   # quick

Data: a numeric-only LeRobot v3.0 dataset written with our LeRobotWriter (state [8], actions [7],
episodes of 100-220 frames, smooth random walks), config type pi0_libero (horizon 50, delta actions on
6 dims). Generated once into --data_dir and reused. All episodes are used (N = --frames).

(a) this step: ``steps.norm_stats.compute_norm_stats`` (exact quantiles), without and with the cache.
(b) openpi-style: running statistics (mean, mean of squares, min/max, 5000-bin histograms re-binned as
    the range grows, as openpi's ``RunningStats``) updated per batch of 32 items from a torch DataLoader
    (no workers) over the per-sample pipeline (``LeRobotFrames.__getitem__``: chunk gathering; then the
    delta transform). Timed on --subsample random items and extrapolated linearly to N items (plus the
    dataset's full set-up time). Numeric-only data (no image decoding) makes this a lower bound of what
    openpi's script costs on a real dataset.
(c) floor: pyarrow reads the same columns, then one numpy pass over the expanded N x H x D chunk
    values (gather + delta + sum, in blocks of 20k frames).

Each measurement runs in a fresh subprocess (peak RSS is the child's VmHWM). Each of --repeats
rounds runs (a), (b) and (c) back to back (order rotated); ratios are the medians of the per-round
ratios, so a change in machine load between rounds does not skew them. Wall and CPU time (``time.process_time``) are both
reported: on a machine shared with other jobs, wall time mostly measures the wait for a core.
"""

from __future__ import annotations

import argparse
import json
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
    from steps.norm_stats import compute_norm_stats

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
    """The per-sample pipeline: a LeRobotFrames item, then the delta transform (as openpi's transforms)."""

    def __init__(self, frames, mask: np.ndarray):
        self.frames, self.mask = frames, mask

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, i: int) -> dict:
        item = self.frames[i]
        actions = item["actions"].copy()
        actions[:, self.mask] -= item["state"][: len(self.mask)][self.mask]
        return {"state": item["state"], "actions": actions}


def run_openpi_style(root: Path, subsample: int) -> dict:
    import torch

    from data_adapters.config_types import get_config_type
    from data_adapters.lerobot_reader import LeRobotFrames

    torch.set_num_threads(1)
    cfg = get_config_type(CONFIG_TYPE)
    start, cpu = time.perf_counter(), time.process_time()
    frames = LeRobotFrames(root, state_keys=cfg.state_keys, action_keys=cfg.action_keys, camera_keys=[],
                           horizon=cfg.action_horizon)  # fmt: skip
    setup, setup_cpu = time.perf_counter() - start, time.process_time() - cpu
    dataset = _DeltaActions(frames, np.asarray(cfg.delta_mask))
    order = np.random.default_rng(0).choice(len(frames), size=min(subsample, len(frames)), replace=False)
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, order.tolist()), batch_size=32)
    state_stats, action_stats = RunningStats(), RunningStats()
    start, cpu = time.perf_counter(), time.process_time()
    for batch in loader:  # openpi: stats[key].update(np.asarray(batch[key])) for state and actions
        state_stats.update(np.asarray(batch["state"]).reshape(-1, cfg.state_dim))
        action_stats.update(np.asarray(batch["actions"]).reshape(-1, cfg.action_dim))
    per_item = (time.perf_counter() - start) / len(order)
    per_item_cpu = (time.process_time() - cpu) / len(order)
    return {"seconds": setup + per_item * len(frames), "cpu_seconds": setup_cpu + per_item_cpu * len(frames),
            "setup_seconds": setup, "items_timed": len(order), "items_per_second": 1 / per_item,
            "extrapolated": True}  # fmt: skip


def run_floor(root: Path, horizon: int = 50, block: int = 20_000) -> dict:
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from data_adapters.config_types import get_config_type

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


def child(method: str, root: Path, subsample: int) -> None:
    baseline = peak_rss_mb()
    if method == "a":
        out = run_step(root)
    elif method == "b":
        out = run_openpi_style(root, subsample)
    else:
        out = run_floor(root)
    out["peak_rss_mb"] = peak_rss_mb()
    out["rss_before_mb"] = baseline
    print(json.dumps(out))


# Modules each child imports before timing (torch only where the method needs it; pandas because
# pyarrow loads it lazily when a parquet file carries pandas metadata).
PRELOAD = {
    "a": "import steps.norm_stats, steps.chunk_stats, steps.fetch_data, data_adapters.lerobot_format",
    "b": "import data_adapters.lerobot_reader",
    "c": "import data_adapters.config_types",
}


def measure(method: str, root: Path, subsample: int) -> dict:
    code = (
        f"import sys; sys.path.insert(0, {str(REPO)!r}); import pyarrow.parquet, pandas; {PRELOAD[method]}; "
        f"import benchmarks.bench_norm_stats as b; from pathlib import Path; "
        f"b.child({method!r}, Path({str(root)!r}), {subsample})"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=1_000_000)
    parser.add_argument("--data_dir", default="/tmp/vla-sft-bench")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--subsample", type=int, default=5_000, help="items timed for (b), per repeat")
    args = parser.parse_args()
    root = Path(args.data_dir) / f"norm_stats_numeric_{args.frames}"
    if not root.exists():
        start = time.perf_counter()
        generate(root, args.frames)
        print(f"generated {root} in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    # Every repeat runs all three back to back (order rotated), so each repeat gives paired ratios
    # measured under the same load; the medians of those ratios are what we report.
    runs: dict[str, list[dict]] = {"a": [], "b": [], "c": []}
    orders = ("abc", "bca", "cab")
    for repeat in range(args.repeats):
        for method in orders[repeat % 3]:
            runs[method].append(measure(method, root, args.subsample))
            shown = {k: v for k, v in runs[method][-1].items() if k not in ("q99_actions", "checksum")}
            print(method, json.dumps(shown), file=sys.stderr)

    def median(method: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[method])

    def ratio(top: str, bottom: str, key: str) -> float:
        return round(statistics.median(t[key] / b[key] for t, b in zip(runs[top], runs[bottom])), 2)

    summary = {
        "frames": args.frames,
        "repeats": args.repeats,
        "seconds": {m: [round(r["seconds"], 2) for r in runs[m]] for m in "abc"},
        "cpu_seconds": {m: [round(r["cpu_seconds"], 2) for r in runs[m]] for m in "abc"},
        "median_seconds": {m: round(median(m, "seconds"), 2) for m in "abc"},
        "median_cpu_seconds": {m: round(median(m, "cpu_seconds"), 2) for m in "abc"},
        "b_over_a": {"wall": ratio("b", "a", "seconds"), "cpu": ratio("b", "a", "cpu_seconds")},
        "a_over_c": {"wall": ratio("a", "c", "seconds"), "cpu": ratio("a", "c", "cpu_seconds")},
        "a_cached_median_seconds": round(median("a", "cached_seconds"), 4),
        "a_passes": runs["a"][0]["passes"],
        "peak_rss_mb": {m: round(max(r["peak_rss_mb"] for r in runs[m])) for m in "abc"},
        "rss_before_mb": {m: round(min(r["rss_before_mb"] for r in runs[m])) for m in "abc"},
        "b_items_timed_per_repeat": runs["b"][0]["items_timed"],
        "b_items_per_second_median": round(median("b", "items_per_second")),
        "b_setup_seconds_median": round(median("b", "setup_seconds"), 2),
        "c_read_seconds_median": round(median("c", "read_seconds"), 2),
    }
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
