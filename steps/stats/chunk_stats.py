"""Per-dimension statistics of exactly what training normalizes, streamed with bounded memory.

What is counted (what the training loader normalizes, see docs/architecture.md): ``state`` once per frame; ``actions`` once per timestep of every
action chunk, i.e. for an episode of length T and horizon H the values ``actions[min(t+k, T-1)] -
delta * state[t]`` for all ``t < T`` and ``k < H`` (past the episode end the last frame repeats, as in
the loader; delta dims subtract the state at the chunk's *first* frame).

How, without materialising N x H x D float64 values (modules: :mod:`steps.stats.chunk_blocks` hands out
the values, :mod:`steps.stats.order_statistics` selects order statistics):

- A non-delta action dim takes frame j's value ``min(j+1, H)`` times (the last frame takes the rest of
  ``T*H``): it is a weighted set of N values (:func:`chunk_multiplicity`).
- A delta dim has a different value for every (t, k). Its moments and min/max come in O(N) from
  window sums and window minima of the actions; its values are classified block by block on their
  float32 values, chunk by chunk: a chunk whose exact [min, max] misses a bracket is settled with one
  comparison, and only the chunks a bracket edge cuts through are expanded.
- Moments (count, mean, M2) are merged block by block with Chan's formulas in float64; min and max are
  exact.
- Quantiles follow ``numpy.quantile(method="linear")`` over all values, bit for bit: the two order
  statistics around ``(n-1) q`` are selected exactly and interpolated with numpy's own formula.
  Small dims keep their (value, multiplicity) pairs in memory and select directly. Larger dims take two
  passes: a uniform random sample of the chunk values (drawn without expanding anything) brackets each
  target rank; the second pass counts the values below each bracket and keeps the few inside it, which
  gives the order statistic exactly. A bracket that misses (odds below 1e-8) is narrowed by further
  passes, still exactly.
- ``method="histogram"`` instead uses a fine histogram between the exact min and max (two passes); its
  quantiles are within one bin width of the exact ones, and that bound is reported.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from steps.stats.chunk_blocks import Block, Episode, Episodes, blocks, chunk_multiplicity
from steps.stats.order_statistics import (
    QUANTILES,
    Bracket,
    DimAccumulator,
    add_to_brackets,
    hist_order_stat,
    missing_ranks,
    numpy_linear_quantile,
    refine_bracket,
    sample_brackets,
)

__all__ = ["QUANTILES", "METHODS", "ChunkStats", "DimResult", "Episode", "Episodes", "chunk_multiplicity",
           "compute_chunk_stats", "numpy_linear_quantile"]  # fmt: skip

METHODS = ("exact", "histogram")
_MAX_REFINE_ROUNDS = 10


@dataclass
class DimResult:
    """Statistics of one dimension; quantiles follow numpy's "linear" method."""

    count: int
    mean: float
    std: float
    min: float
    max: float
    quantiles: dict[str, float]
    # Largest possible |reported - exact| per quantile (0.0 when exact).
    error_bound: dict[str, float]
    # count_below(x) -> (number of values < x, exact?) and count_at_most(x) -> (number <= x, exact?).
    count_below: Callable[[float], tuple[int, bool]] = field(repr=False)
    count_at_most: Callable[[float], tuple[int, bool]] = field(repr=False)


@dataclass
class ChunkStats:
    """Result of :func:`compute_chunk_stats`: one :class:`DimResult` per state and per action dim."""

    state: list[DimResult]
    actions: list[DimResult]
    method: str
    passes: int
    frames: int


def compute_chunk_stats(
    episodes: Callable[[], Iterable[Episode | Episodes]],
    lengths: Sequence[int],
    *,
    state_dim: int,
    action_dim: int,
    horizon: int,
    delta_mask: Sequence[bool],
    method: str = "exact",
    memory_budget_bytes: int = 1 << 30,
    sample_size: int = 1 << 19,
    hist_bins: int = 1 << 14,
    block_values: int = 1 << 19,
    seed: int = 0,
    workers: int = 1,
) -> ChunkStats:
    """Statistics of state (per frame) and actions (per chunk timestep, after delta) for every dim.

    Args:
        episodes: called once per pass; yields Episode or Episodes (runs of whole episodes, e.g. one
            data file), the same every time.
        lengths: the episodes' lengths (to plan sampling and memory before reading).
        state_dim, action_dim: dims of the concatenated state / action vectors.
        horizon: action chunk length H.
        delta_mask: per action dim, True -> minus the state dim of the same index at the chunk's first frame.
        method: "exact" (numpy.quantile over all values) or "histogram" (within one bin width, stated).
        memory_budget_bytes: dims whose (value, weight) pairs fit in about half of this are kept in
            memory; the rest are streamed (the budget also caps what a bracket may keep).
        sample_size: sample per group used to bracket quantile ranks in streaming mode.
        hist_bins: bins of histogram brackets (method "histogram", or narrowing a missed bracket).
        block_values: about how many chunk values of one dim are expanded at a time.
        workers: threads that process the dims of a block in parallel (results do not depend on it).

    Raises:
        ValueError: NaN/inf in the data (naming episode and frame), bad arguments, or no frames.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if horizon < 1:
        raise ValueError(f"horizon must be >= 1, got {horizon}")
    delta = np.asarray(delta_mask, dtype=bool)
    if delta.shape != (action_dim,):
        raise ValueError(f"delta_mask has {delta.size} entries, expected action_dim={action_dim}")
    if delta.any() and int(np.flatnonzero(delta).max()) >= state_dim:
        raise ValueError("delta_mask marks an action dim that has no state dim of the same index")
    lengths = np.asarray(lengths, dtype=np.int64)
    frames = int(lengths.sum())
    if frames == 0:
        raise ValueError("no frames to compute statistics over (empty episode selection?)")
    n_act = frames * horizon
    block_frames = max(1, block_values // horizon)
    dims = [DimAccumulator("state", i, frames, False) for i in range(state_dim)]
    dims += [DimAccumulator("actions", i, n_act, not delta[i]) for i in range(action_dim)]

    # Cheapest dims in memory first (a weighted dim keeps N values, a delta dim N*H): up to half the
    # budget, and only while small: beyond ~1e5 values the streamed selection beats a sort.
    in_memory_cap = 1 << 17
    budget = memory_budget_bytes // 2
    for d in sorted(dims, key=lambda d: d.total if d.group == "state" or d.weighted else n_act):
        stored = frames if (d.group == "state" or d.weighted) else n_act
        cost = stored * (16 if d.weighted else 8) * 2
        if method == "exact" and stored <= in_memory_cap and cost <= budget:
            budget -= cost
        else:
            d.mode = "stream" if method == "exact" else "hist"
    streamed = [d for d in dims if d.mode == "stream"]
    # What one bracket may keep: its share of half the budget (8 bytes a value, 16 with a weight).
    cap = max(256, int(memory_budget_bytes // 2 // max(1, len(streamed) * len(QUANTILES)) // 12))

    def run_pass(
        work: Callable[[Block], None],
        per_dim: Callable[[Block, DimAccumulator], None] | None = None,
        dims_of_pass: Sequence[DimAccumulator] = (),
    ) -> None:
        threaded = workers > 1 and len(dims_of_pass) > 1
        with ThreadPoolExecutor(workers) if threaded else contextlib.nullcontext() as pool:
            for block in blocks(episodes(), block_frames, horizon, delta):
                work(block)
                if pool is None:
                    for d in dims_of_pass:
                        per_dim(block, d)
                else:
                    # Dims are independent and numpy releases the GIL in its loops: spread them over
                    # threads. The block's shared helpers are built first so no thread races for them.
                    block.prepare()
                    list(pool.map(lambda d, block=block: per_dim(block, d), dims_of_pass))

    # Pass 1: memory dims in full (moments + values), the raw-data checks, and the samples.
    rng = np.random.default_rng(seed)
    rates = {"state": min(1.0, sample_size / frames), "actions": min(1.0, sample_size / n_act)}
    samples: dict[str, list[np.ndarray]] = {"state": [], "actions": []}
    need_sample = {g for g in samples if any(d.group == g for d in streamed)}

    def pass_one(block: Block) -> None:
        block.check_finite()
        for d in dims:
            if d.mode in ("memory", "hist"):
                d.merge(*block.moments(d.group, d.index))
            if d.mode == "memory":
                v, w = block.values(d.group, d.index)
                d.kept.append((v.copy(), w))
        for g in need_sample:
            samples[g].append(block.sample(g, rates[g], rng))

    run_pass(pass_one)
    passes = 1
    for d in dims:
        if d.mode == "memory":
            d.finish_memory()
        elif d.mode == "stream":
            group = samples[d.group]
            d.sample = np.concatenate([s[:, d.index] for s in group]) if group else np.empty(0)
            d.brackets = sample_brackets(d, cap)
        else:
            d.brackets = [Bracket(d.min, d.max, "hist", cap, bins=hist_bins)]

    # Pass 2 (streamed and histogram dims): moments of streamed dims and the brackets.
    second = [d for d in dims if d.mode != "memory"]
    if second:

        def pass_two(block: Block, d: DimAccumulator) -> None:
            if d.mode == "stream":
                d.merge(*block.moments(d.group, d.index))
            add_to_brackets(d.brackets, block, d.group, d.index)

        run_pass(lambda block: None, pass_two, second)
        passes += 1
        for d in second:
            for b in d.brackets:
                b.finish()

    # Further passes only when a sample bracket missed its rank (rare): narrow down, exactly.
    for _ in range(_MAX_REFINE_ROUNDS):
        todo = {d: missing_ranks(d) for d in streamed}
        todo = {d: r for d, r in todo.items() if r}
        if not todo:
            break
        fresh = {}
        for d, ranks in todo.items():
            # Neighbouring ranks usually land in the same interval: one bracket serves both.
            unique = {}
            for r in ranks:
                b = refine_bracket(d, r, cap, hist_bins)
                unique.setdefault((b.lo, b.hi, b.kind), b)
            fresh[d] = list(unique.values())
        for d, brackets in fresh.items():
            d.brackets += brackets

        def pass_refine(block: Block, d: DimAccumulator, fresh=fresh) -> None:
            add_to_brackets(fresh[d], block, d.group, d.index)

        run_pass(lambda block: None, pass_refine, list(fresh))
        passes += 1
        for brackets in fresh.values():
            for b in brackets:
                b.finish()

    results = {g: [_result(d) for d in dims if d.group == g] for g in ("state", "actions")}
    return ChunkStats(
        state=results["state"], actions=results["actions"], method=method, passes=passes, frames=frames
    )


def _result(d: DimAccumulator) -> DimResult:
    quantiles, bounds = {}, {}
    for name, q in QUANTILES.items():
        exact = [True]

        def order_stat(r: int, exact=exact) -> float:
            value = d.order_stat(r)
            if value is not None:
                return value
            exact[0] = False
            hist = [b for b in d.brackets if b.kind == "hist" and b.hist is not None and b.below <= r]
            hist = [b for b in hist if r < b.below + b.inside] or hist
            return hist_order_stat(min(hist, key=lambda b: b.hi - b.lo), r) if hist else d.mean

        quantiles[name] = min(max(numpy_linear_quantile(order_stat, d.n, q), d.min), d.max)
        if exact[0]:
            bounds[name] = 0.0
        else:
            hist = [b for b in d.brackets if b.kind == "hist" and b.hist is not None]
            bounds[name] = min(((b.hi - b.lo) / b.bins for b in hist), default=d.max - d.min)
    return DimResult(
        count=d.n,
        mean=d.mean,
        std=math.sqrt(max(d.m2, 0.0) / d.n),
        min=d.min,
        max=d.max,
        quantiles=quantiles,
        error_bound=bounds,
        count_below=lambda x: d.count(x, strict=True),
        count_at_most=lambda x: d.count(x, strict=False),
    )
