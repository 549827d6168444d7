"""Classifying delta action chunks against quantile brackets: our numpy kernel vs the alternatives tried.

    python benchmarks/bench_chunk_classification.py [--blocks 20] [--repeats 5]

The second pass of the statistics step (``steps.stats.order_statistics._add_by_rows``) dominates its run time: for
each delta dim and each of the 5 quantile brackets it settles whole chunks by their exact float32
[min, max] and expands only the chunks a bracket edge cuts (gather the window, subtract the state,
compare, keep the values inside). This script times that kernel against the variants tried to make it
cheaper, on real blocks of the benchmark dataset of ``bench_norm_stats.py`` (generated if missing) and
brackets drawn the way the step draws them, and checks that every variant gives the same counts and
values:
- ``thresholds``: compare the raw float32 actions with an exact per-chunk threshold (the smallest
  float32 ``a`` with ``fl32(a - s) >= edge``) instead of subtracting the state first;
- ``segments 25+25`` / ``10+40``: bounds per part of each chunk, expanding only the parts that touch;
- ``whole view``: brackets touching over half of the chunks compare the sliding-window view of all
  chunks in place (no gather), with thresholds that select nothing outside the touching chunks.
- ``numba`` (only when numba is installed; not a dependency): the same classification as one compiled
  loop per bracket (counts first, then the values of chunks that hold any), without temporaries. Its
  import and first call (JIT compile, or loading numba's on-disk cache) are reported apart.
Times are CPU seconds (``time.process_time``), variants alternating within each repeat.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from steps.stats.chunk_blocks import Block, blocks, window_min_max  # noqa: E402
from steps.stats.order_statistics import Bracket, DimAccumulator, _add_by_rows, sample_brackets  # noqa: E402

SAMPLE = 1 << 19  # the step's default sample per group


class Dim:
    """One delta dim of one block, as the step's classifier sees it (raw arrays for the variants)."""

    def __init__(self, block: Block, dim: int, edges: list[tuple[float, float]]):
        self.rows = block.view("actions", dim).rows  # also builds the float32 columns read below
        self.padded32, self.first = block._padded32[dim], block._padding()[1]
        self.state32 = block.state[:, dim].astype(np.float32)
        self.column, self.state = block.padded_actions[:, dim], block.state[:, dim]
        self.lo, self.hi, self.h, self.edges = self.rows.lo, self.rows.hi, block.horizon, edges

    def exact(self, rows: np.ndarray, k: np.ndarray, offset: int = 0) -> np.ndarray:
        return self.column[self.first[rows] + k + offset] - self.state[rows]


def ours(d: Dim) -> list[tuple[int, np.ndarray]]:
    brackets = [Bracket(lo, hi, "collect", cap=1 << 40) for lo, hi in d.edges]
    _add_by_rows(brackets, d.rows)
    # A bracket may keep repeated values as (value, count) pairs: expand them for the comparison.
    return [
        (b.below, np.concatenate([v if w is None else np.repeat(v, w) for v, w in b.kept] or [np.empty(0)]))
        for b in brackets
    ]


def threshold(edge: np.float32, s32: np.ndarray) -> np.ndarray:
    """Per s: the smallest float32 a with fl32(a - s) >= edge, so that fl32(a - s) < edge <=> a < it."""
    mid = (np.float64(edge) + np.float64(np.nextafter(edge, np.float32(-np.inf)))) / 2
    x = s32.astype(np.float64) + mid  # within a float32 step of the answer; fixed up below
    c = x.astype(np.float32)
    c = np.where(c < x, np.nextafter(c, np.float32(np.inf)), c)
    for _ in range(4):
        ok = (c - s32) >= edge
        prev = np.nextafter(c, np.float32(-np.inf))
        up, down = ~ok, ok & ((prev - s32) >= edge)
        if not (up.any() or down.any()):
            return c
        c = np.where(up, np.nextafter(c, np.float32(np.inf)), np.where(down, prev, c))
    raise RuntimeError("threshold did not converge")


def thresholds(d: Dim) -> list[tuple[int, np.ndarray]]:
    windows, out = sliding_window_view(d.padded32, d.h), []
    for lo32, hi32 in d.edges:
        below_n = d.h * int(np.count_nonzero(d.hi < lo32))
        touching = np.flatnonzero((d.hi >= lo32) & (d.lo <= hi32))
        s = d.state32[touching]
        t_lo = threshold(lo32, s)[:, None]
        t_hi = threshold(np.nextafter(hi32, np.float32(np.inf)), s)[:, None]
        v = windows[d.first[touching]]
        below = v < t_lo
        below_n += int(np.count_nonzero(below))
        inside = v < t_hi
        inside ^= below
        t, k = np.divmod(np.flatnonzero(inside), d.h)
        out.append((below_n, d.exact(touching[t], k)))
    return out


def segments(d: Dim, splits: tuple[int, ...]) -> list[tuple[int, np.ndarray]]:
    # Part bounds cost a window min/max per part (timed here: the step would compute them per block).
    parts = []
    for a, b in zip(splits[:-1], splits[1:]):
        lo, hi = window_min_max(d.padded32, d.first + a, b - a)
        parts.append((a, b - a, lo - d.state32, hi - d.state32, sliding_window_view(d.padded32, b - a)))
    out = []
    for lo32, hi32 in d.edges:
        below_n = d.h * int(np.count_nonzero(d.hi < lo32))
        touch = (d.hi >= lo32) & (d.lo <= hi32)
        kept = []
        for a, width, part_lo, part_hi, windows in parts:
            below_n += width * int(np.count_nonzero(touch & (part_hi < lo32)))
            rows = np.flatnonzero(touch & (part_hi >= lo32) & (part_lo <= hi32))
            v = windows[d.first[rows] + a]
            v -= d.state32[rows, None]
            below = v < lo32
            below_n += int(np.count_nonzero(below))
            inside = v <= hi32
            inside ^= below
            t, k = np.divmod(np.flatnonzero(inside), width)
            kept.append(d.exact(rows[t], k, a))
        out.append((below_n, np.concatenate(kept)))
    return out


def whole_view(d: Dim, dense: float = 0.5) -> list[tuple[int, np.ndarray]]:
    windows = sliding_window_view(d.padded32, d.h)
    row_of = np.zeros(len(windows), np.int64)
    row_of[d.first] = np.arange(d.first.size)
    out = []
    for lo32, hi32 in d.edges:
        below_n = d.h * int(np.count_nonzero(d.hi < lo32))
        touching = np.flatnonzero((d.hi >= lo32) & (d.lo <= hi32))
        if touching.size < dense * d.first.size:
            v = windows[d.first[touching]]
            v -= d.state32[touching, None]
            below = v < lo32
            inside = v <= hi32
            rows = touching
        else:  # every window position; -inf thresholds select nothing (padding, chunks that miss)
            t_lo = np.full(len(windows), -np.inf, np.float32)
            t_hi = np.full(len(windows), -np.inf, np.float32)
            s = d.state32[touching]
            t_lo[d.first[touching]] = threshold(lo32, s)
            t_hi[d.first[touching]] = threshold(np.nextafter(hi32, np.float32(np.inf)), s)
            below = windows < t_lo[:, None]
            inside = windows < t_hi[:, None]
            rows = row_of
        below_n += int(np.count_nonzero(below))
        inside ^= below
        t, k = np.divmod(np.flatnonzero(inside), d.h)
        out.append((below_n, d.exact(rows[t], k)))
    return out


def numba_variant():
    """The numba kernel, or None without numba; also the seconds its import and first call took."""
    try:
        start = time.perf_counter()
        import numba
    except ImportError:
        return None, 0.0

    @numba.njit(nogil=True, cache=True)
    def classify(padded32, first, state32, row_lo, row_hi, h, lo, hi, column, state, out):
        below, m = 0, 0
        for t in range(first.shape[0]):
            if row_hi[t] < lo:
                below += h
                continue
            if row_lo[t] > hi:
                continue
            p, s = first[t], state32[t]
            n_below, n_upto = 0, 0
            for k in range(h):  # branch-free, so it can vectorise
                v = padded32[p + k] - s
                n_below += v < lo
                n_upto += v <= hi
            below += n_below
            if n_upto > n_below:
                for k in range(h):
                    v = padded32[p + k] - s
                    if v >= lo and v <= hi:
                        out[m] = column[p + k] - state[t]
                        m += 1
        return below, m

    def variant(d: Dim) -> list[tuple[int, np.ndarray]]:
        out, result = np.empty(d.first.size * d.h), []
        for lo, hi in d.edges:
            below, m = classify(
                d.padded32, d.first, d.state32, d.lo, d.hi, d.h, lo, hi, d.column, d.state, out
            )
            result.append((below, out[:m].copy()))
        return result

    return variant, time.perf_counter() - start


VARIANTS = {
    "ours (steps.stats.order_statistics._add_by_rows)": ours,
    "thresholds": thresholds,
    "segments 25+25": lambda d: segments(d, (0, 25, 50)),
    "segments 10+40": lambda d: segments(d, (0, 10, 50)),
    "whole view": whole_view,
}


def load_dims(root: Path, n_blocks: int) -> list[Dim]:
    from data_adapters.lerobot_format import read_meta
    from data_adapters.registry import get_config_type
    from steps.stats.numeric_columns import episode_source

    cfg = get_config_type("pi0_libero")
    meta = read_meta(root)
    selected = meta.select(None)
    source = episode_source(meta, selected, cfg.state_keys, cfg.action_keys, keep_bytes=1 << 30)
    delta = np.asarray(cfg.delta_mask)
    h = cfg.action_horizon
    picked = []
    for block in blocks(source(), (1 << 19) // h, h, delta):  # the step's block size
        picked.append(block)
        if len(picked) == n_blocks:
            break
    # Brackets as the step draws them: a uniform sample of the chunk values at the step's rate.
    frames = sum(ep.length for ep in selected)
    rng = np.random.default_rng(0)
    sample = np.concatenate([b.sample("actions", SAMPLE / (frames * h), rng) for b in picked])
    dims = []
    for dim in np.flatnonzero(delta):
        acc = DimAccumulator("actions", int(dim), frames * h, False)
        acc.sample = sample[:, dim]
        edges = [(b._lo32, b._hi32) for b in sample_brackets(acc, cap=1 << 40)]
        dims += [Dim(block, int(dim), edges) for block in picked]
    return dims


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data_dir", default="/tmp/vla-sft-bench")
    parser.add_argument("--frames", type=int, default=1_000_000)
    parser.add_argument("--blocks", type=int, default=20, help="blocks of ~10k frames (the step's size)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    root = Path(args.data_dir) / f"norm_stats_numeric_{args.frames}"
    if not root.exists():
        from bench_norm_stats import generate

        generate(root, args.frames)
    dims = load_dims(root, args.blocks)
    variants = dict(VARIANTS)
    compiled, numba_import_s = numba_variant()
    if compiled is not None:
        start = time.perf_counter()
        compiled(dims[0])
        numba_first_call_s = time.perf_counter() - start
        variants["numba"] = compiled
    reference = [ours(d) for d in dims]
    for name, variant in variants.items():  # every variant must classify exactly alike
        for d, want in zip(dims, reference):
            for (below, kept), (want_below, want_kept) in zip(variant(d), want):
                assert below == want_below and np.array_equal(np.sort(kept), np.sort(want_kept)), name
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.repeats):
        for name, variant in variants.items():
            start = time.process_time()
            for d in dims:
                variant(d)
            seconds[name].append(time.process_time() - start)
    ours_s = seconds[next(iter(VARIANTS))]
    frames = sum(d.first.size for d in dims[: args.blocks])  # dims are grouped by dim, then block
    print(f"{len(dims)} block-dims ({args.blocks} blocks, ~{frames:,} frames, 6 delta dims), "
          f"{args.repeats} repeats, CPU seconds; all variants classify identically\n")  # fmt: skip
    print("| variant | CPU s (median) | vs ours (median of per-repeat ratios) |")
    print("| --- | ---: | ---: |")
    for name, s in seconds.items():
        ratio = statistics.median(a / b for a, b in zip(s, ours_s))
        print(f"| {name} | {statistics.median(s):.3f} | {ratio:.2f}x |")
    if compiled is not None:
        print(f"\nnumba: import {numba_import_s:.2f} s, first call (compile or cache load) {numba_first_call_s:.2f} s, "
              f"paid once per process")  # fmt: skip


if __name__ == "__main__":
    main()
