"""Per-dimension statistics of exactly what training normalizes, streamed with bounded memory.

What is counted (DESIGN.md section 4): ``state`` once per frame; ``actions`` once per timestep of every
action chunk, i.e. for an episode of length T and horizon H the values ``actions[min(t+k, T-1)] -
delta * state[t]`` for all ``t < T`` and ``k < H`` (past the episode end the last frame repeats, as in
the loader; delta dims subtract the state at the chunk's *first* frame).

How, without materialising N x H x D values:

- A non-delta action dim takes frame j's value ``min(j+1, H)`` times (the last frame takes the rest of
  ``T*H``): it is a weighted set of N values (:func:`chunk_multiplicity`).
- A delta dim has a different value for every (t, k), so its values are expanded block by block
  (a few MB at a time) from a sliding window over the episode's padded actions.
- Moments (count, mean, M2) are merged block by block with Chan's formulas in float64; min and max are
  exact.
- Quantiles follow ``numpy.quantile(method="linear")`` over all values, bit for bit: the two order
  statistics around ``(n-1) q`` are selected exactly and interpolated with numpy's own formula.
  Dims small enough for the memory budget keep their (value, multiplicity) pairs and select directly.
  Larger dims are handled in two passes: a uniform random sample of the chunk values (drawn without
  expanding anything) brackets each target rank; the second pass counts the values below each bracket
  and keeps the few inside it, which gives the order statistic exactly. A bracket that misses (odds
  below 1e-8 per bracket) is narrowed by further passes (histogram, then collect), still exactly.
- ``method="histogram"`` instead uses a fine histogram between the exact min and max (two passes); its
  quantiles are within one bin width of the exact ones, and that bound is reported.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

QUANTILES: dict[str, float] = {"q01": 0.01, "q10": 0.10, "q50": 0.50, "q90": 0.90, "q99": 0.99}
METHODS = ("exact", "histogram")
# Width of the sample bracket around a target rank, in standard deviations of the sample rank.
_BRACKET_Z = 6.0
_MAX_REFINE_ROUNDS = 10


@dataclass(frozen=True)
class Episode:
    """One episode's numeric data in float64: state ``[T, Ds]`` and actions ``[T, Da]``."""

    index: int
    state: np.ndarray
    actions: np.ndarray


@dataclass(frozen=True)
class Episodes:
    """Whole episodes back to back (e.g. one data file): state ``[n, Ds]``, actions ``[n, Da]``."""

    indices: np.ndarray
    lengths: np.ndarray
    state: np.ndarray
    actions: np.ndarray


def _as_run(item: Episode | Episodes) -> Episodes:
    if isinstance(item, Episode):
        item = Episodes(np.array([item.index]), np.array([len(item.state)]), item.state, item.actions)
    lengths = np.asarray(item.lengths, dtype=np.int64)
    first = int(item.indices[0]) if len(item.indices) else -1
    if len(item.state) != len(item.actions) or len(item.state) != int(lengths.sum()):
        raise ValueError(f"episodes from {first}: {len(item.state)} state rows, {len(item.actions)} action rows, "
                         f"lengths summing to {int(lengths.sum())}")  # fmt: skip
    if (lengths <= 0).any():  # empty episodes have no frames and no chunks
        keep = lengths > 0
        item = Episodes(np.asarray(item.indices)[keep], lengths[keep], item.state, item.actions)
    return item


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


def chunk_multiplicity(lengths: Sequence[int] | np.ndarray, horizon: int) -> np.ndarray:
    """How often each frame's action occurs among all chunk timesteps of its episode.

    For episodes of the given lengths (frames concatenated), frame ``j < T-1`` is timestep ``j - t`` of
    chunks ``t = max(0, j-H+1) .. j``, i.e. ``min(j+1, H)`` times; the last frame also fills every
    timestep past the episode end, so each episode's multiplicities sum to ``T * H``.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    starts = np.cumsum(lengths) - lengths
    pos = np.arange(int(lengths.sum()), dtype=np.int64) - np.repeat(starts, lengths)
    mult = np.minimum(pos + 1, horizon)
    before_last = lengths - 1  # sum_{i=1..m} min(i, H) for the m frames before the last one
    capped = np.minimum(before_last, horizon)
    sum_before = capped * (capped + 1) // 2 + np.maximum(before_last - horizon, 0) * horizon
    mult[starts + lengths - 1] = lengths * horizon - sum_before
    return mult


def numpy_linear_quantile(order_stat: Callable[[int], float], n: int, q: float) -> float:
    """``numpy.quantile(x, q)`` (method "linear") given a function returning x's r-th smallest value."""
    virtual = np.float64(n - 1) * np.float64(q)
    if virtual >= n - 1:
        return float(order_stat(n - 1))
    lower = math.floor(virtual)
    a, b = np.float64(order_stat(lower)), np.float64(order_stat(lower + 1))
    gamma = virtual - np.float64(lower)
    diff = b - a
    # numpy's _lerp: from the nearer end, for monotonicity and exact end points.
    return float(b - diff * (1 - gamma) if gamma >= 0.5 else a + diff * gamma)


def _select(values: np.ndarray, weights: np.ndarray | None, ranks: Sequence[int]) -> np.ndarray:
    """Values at the given 0-based ranks of the multiset where ``values[i]`` occurs ``weights[i]`` times."""
    ranks = np.asarray(ranks, dtype=np.int64)
    if weights is None:
        return np.partition(values, ranks)[ranks]
    order = np.argsort(values, kind="stable")
    cum = np.cumsum(weights[order])
    return values[order[np.searchsorted(cum, ranks, side="right")]]


# -- blocks of episodes ------------------------------------------------------------------------------


@dataclass
class _View:
    """One dim of a block: float32 values to classify, weights, and exact float64 values on demand."""

    v32: np.ndarray
    weights: np.ndarray | None
    pick: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray | None]]
    # True when v32 holds the values exactly (float32 data, no delta subtraction).
    exact32: bool = False


def _window_min_max(x: np.ndarray, starts: np.ndarray, h: int) -> tuple[np.ndarray, np.ndarray]:
    """min and max of ``x[i : i + h]`` for each i in ``starts`` (van Herk / Gil-Werman, O(len(x)))."""
    n = x.size
    grid = np.empty(-(-n // h) * h)
    grid[:n], grid[n:] = x, x[-1]
    grid = grid.reshape(-1, h)
    out = []
    for reduce in (np.minimum, np.maximum):
        prefix = reduce.accumulate(grid, axis=1).reshape(-1)
        suffix = reduce.accumulate(grid[:, ::-1], axis=1)[:, ::-1].reshape(-1)
        out.append(reduce(suffix[starts], prefix[starts + h - 1]))
    return out[0], out[1]


class _Block:
    """Several whole episodes back to back; hands out each dim's values (and weights)."""

    def __init__(self, runs: list[Episodes], horizon: int, delta: np.ndarray):
        one = len(runs) == 1
        self.indices = runs[0].indices if one else np.concatenate([r.indices for r in runs])
        self.lengths = runs[0].lengths if one else np.concatenate([r.lengths for r in runs])
        # Runs may hold float32 (as stored): the block works in float64.
        self.state = np.asarray(runs[0].state if one else np.concatenate([r.state for r in runs]), np.float64)
        self.actions = np.asarray(
            runs[0].actions if one else np.concatenate([r.actions for r in runs]), np.float64
        )
        self.n = int(self.lengths.sum())
        self.horizon = horizon
        self.delta = delta
        self._mult: np.ndarray | None = None
        self._windows: tuple[np.ndarray, ...] | None = None
        self._padded: np.ndarray | None = None
        stored32 = all(r.state.dtype == np.float32 and r.actions.dtype == np.float32 for r in runs)
        self._float32: bool | None = True if stored32 else None

    def check_finite(self) -> None:
        for name, x in (("state", self.state), ("actions", self.actions)):
            bad = ~np.isfinite(x)
            if bad.any():
                row, dim = (int(v) for v in np.argwhere(bad)[0])
                ends = np.cumsum(self.lengths)
                pos = int(np.searchsorted(ends, row, side="right"))
                frame = row - int(ends[pos] - self.lengths[pos])
                raise ValueError(
                    f"non-finite value {x[row, dim]} in {name}[{dim}] at episode "
                    f"{int(self.indices[pos])}, frame {frame}"
                )

    @property
    def mult(self) -> np.ndarray:
        if self._mult is None:
            self._mult = chunk_multiplicity(self.lengths, self.horizon)
        return self._mult

    def values(self, group: str, dim: int) -> tuple[np.ndarray, np.ndarray | None]:
        """(values, weights or None) of one dim over this block, as training counts them (float64)."""
        if group == "state":
            return self.state[:, dim], None
        if not self.delta[dim]:
            return self.actions[:, dim], self.mult
        source, first, _, _ = self._padding()
        chunk = sliding_window_view(self.actions[source, dim], self.horizon)[first]  # [n, H] copy
        chunk -= self.state[:, dim, None]
        return chunk.reshape(-1), None

    def moments(self, group: str, dim: int) -> tuple[int, float, float, float, float]:
        """(count, mean, M2, min, max) of one dim over this block."""
        if group == "actions" and self.delta[dim]:
            return self._delta_moments(dim)
        v, w = self.values(group, dim)
        if w is None:
            nb, mean = v.size, float(v.mean())
            d = v - mean
            m2 = float(np.square(d, out=d).sum())
        else:
            nb = int(w.sum())
            mean = float((v * w).sum() / nb)
            d = v - mean
            m2 = float((w * d * d).sum())
        return nb, mean, m2, float(v.min()), float(v.max())

    def view(self, group: str, dim: int) -> _View:
        """The dim's values as float32 for classification, and a way to fetch exact float64 ones."""
        if group == "actions" and self.delta[dim] and self.float32_data:
            # Classify on the float32 difference of float32 inputs: IEEE rounds it correctly, so it is
            # a monotone function of the exact (float64) value, and nothing float64 of size N x H is
            # ever materialised; the few values kept are recomputed in float64 from their positions.
            _, first, _, _ = self._padding()
            column = self.padded_actions[:, dim]
            state = self.state[:, dim]
            v32 = sliding_window_view(column.astype(np.float32), self.horizon)[first]
            v32 -= state.astype(np.float32)[:, None]

            def pick(mask: np.ndarray) -> tuple[np.ndarray, None]:
                t, k = np.divmod(np.flatnonzero(mask), self.horizon)
                return column[first[t] + k] - state[t], None

            return _View(v32.reshape(-1), None, pick)
        v, w = self.values(group, dim)
        exact32 = self.float32_data and not (group == "actions" and self.delta[dim])
        return _View(v.astype(np.float32), w, lambda mask: (v[mask], None if w is None else w[mask]), exact32)

    def prepare(self) -> None:
        """Build the lazily cached helpers now (before several threads use the block)."""
        self._padding()
        _ = self.mult, self.float32_data, self.padded_actions

    @property
    def padded_actions(self) -> np.ndarray:
        """Actions with each episode followed by H-1 copies of its last frame, ``[n + e(H-1), Da]``."""
        if self._padded is None:
            self._padded = self.actions[self._padding()[0]]
        return self._padded

    @property
    def float32_data(self) -> bool:
        if self._float32 is None:
            self._float32 = all(np.array_equal(x.astype(np.float32), x) for x in (self.state, self.actions))
        return self._float32

    def _padding(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        # Each episode is followed by H-1 copies of its last frame, so the H-window starting at a real
        # frame is exactly that frame's chunk; windows never cross into the next episode.
        if self._windows is None:
            h = self.horizon
            starts = np.cumsum(self.lengths) - self.lengths
            padded = self.lengths + h - 1
            pad_starts = np.cumsum(padded) - padded
            pos = np.arange(int(padded.sum())) - np.repeat(pad_starts, padded)
            source = np.repeat(starts, padded) + np.minimum(pos, np.repeat(self.lengths - 1, padded))
            first = np.repeat(pad_starts - starts, self.lengths) + np.arange(self.n)
            self._windows = (source, first, pad_starts, padded)
        return self._windows

    def _delta_moments(self, dim: int) -> tuple[int, float, float, float, float]:
        # Per chunk (row): mean = window mean of the actions - state; M2 = the window's own M2 (the
        # state is a constant shift). Window sums come from cumulative sums of the padded column,
        # centred per episode so the running sums stay small. Then rows merge (law of total variance).
        h = self.horizon
        _, first, pad_starts, padded = self._padding()
        column, state = self.padded_actions[:, dim], self.state[:, dim]
        shift = np.add.reduceat(column, pad_starts) / padded
        centred = column - np.repeat(shift, padded)
        c1 = np.concatenate(([0.0], np.cumsum(centred)))
        c2 = np.concatenate(([0.0], np.cumsum(centred * centred)))
        s1, s2 = c1[first + h] - c1[first], c2[first + h] - c2[first]
        row_mean = s1 / h + (np.repeat(shift, self.lengths) - state)
        row_m2 = np.maximum(s2 - s1 * s1 / h, 0.0)
        mean = float(row_mean.mean())
        m2 = float(row_m2.sum() + h * np.square(row_mean - mean).sum())
        # min_k fl(a_k - s) == fl(min_k a_k - s): subtraction rounds monotonically.
        low, high = _window_min_max(column, first, h)
        return self.n * h, mean, m2, float((low - state).min()), float((high - state).max())

    def sample(self, group: str, rate: float, rng: np.random.Generator) -> np.ndarray:
        """Uniform sample (with replacement) of this block's chunk values, all dims of a group."""
        if group == "state":
            rows = rng.integers(0, self.n, rng.binomial(self.n, rate))
            return self.state[rows]
        h = self.horizon
        pos = rng.integers(0, self.n * h, rng.binomial(self.n * h, rate))
        t, k = pos // h, pos % h
        last = np.repeat(np.cumsum(self.lengths) - 1, self.lengths)
        values = self.actions[np.minimum(t + k, last[t])]
        dd = np.flatnonzero(self.delta)
        values[:, dd] -= self.state[t[:, None], dd]
        return values


def _blocks(
    runs: Iterable[Episode | Episodes], block_frames: int, horizon: int, delta: np.ndarray
) -> Iterator[_Block]:
    """Blocks of about ``block_frames`` frames, cut at episode boundaries (views where possible)."""
    pending: list[Episodes] = []
    size = 0
    for run in map(_as_run, runs):
        ends = np.cumsum(run.lengths)
        first_ep, first_row = 0, 0
        while first_ep < len(run.lengths):
            # The fewest whole episodes that fill the block (or all that are left).
            last_ep = min(int(np.searchsorted(ends - first_row, block_frames - size)), len(run.lengths) - 1)
            stop_row = int(ends[last_ep])
            pending.append(Episodes(run.indices[first_ep : last_ep + 1], run.lengths[first_ep : last_ep + 1],
                                    run.state[first_row:stop_row], run.actions[first_row:stop_row]))  # fmt: skip
            size += stop_row - first_row
            first_ep, first_row = last_ep + 1, stop_row
            if size >= block_frames:
                yield _Block(pending, horizon, delta)
                pending, size = [], 0
    if pending:
        yield _Block(pending, horizon, delta)


# -- per-dim accumulation ----------------------------------------------------------------------------


@dataclass(eq=False)
class _Bracket:
    """Values in [lo, hi] of one dim: counted exactly, and kept ("collect") or binned ("hist")."""

    lo: float
    hi: float
    kind: str  # "collect" | "hist"
    cap: int
    bins: int = 0
    rank: int = -1  # the rank a refinement bracket was made for (-1: a sample bracket)
    below: int = 0  # number of values < lo
    inside: int = 0  # number of values in [lo, hi]
    kept: list = field(default_factory=list)
    overflow: bool = False
    hist: np.ndarray | None = None
    _kept_size: int = 0
    _values: np.ndarray | None = None
    _selected: dict = field(default_factory=dict)
    _weights: np.ndarray | None = None

    def __post_init__(self) -> None:
        # Edges are float32 numbers (rounded outwards) so that values can be classified on their float32
        # copy, twice as fast: rounding is monotone, so {f32(v) < lo} holds exactly the values below
        # every value of {lo <= f32(v) <= hi}, and ranks stay exact.
        self.lo, self.hi = _f32_down(self.lo), _f32_up(self.hi)
        self._lo32, self._hi32 = np.float32(self.lo), np.float32(self.hi)

    def add(self, view: _View) -> None:
        below = view.v32 < self._lo32
        inside = view.v32 <= self._hi32
        inside ^= below
        if view.exact32 and self.lo == self.hi and self.kind == "collect":
            # Every value inside equals lo (the float32 copy is exact): count, keep nothing.
            w = view.weights
            n_below = int(np.count_nonzero(below)) if w is None else int(w[below].sum())
            n_inside = int(np.count_nonzero(inside)) if w is None else int(w[inside].sum())
            self.below, self.inside = self.below + n_below, self.inside + n_inside
            if n_inside and not self.overflow:
                self.kept.append((np.array([self.lo]), np.array([n_inside], dtype=np.int64)))
                self._kept_size += 1
                if self._kept_size > 64:
                    self._compress()
            return
        picked, picked_w = view.pick(inside)
        if view.weights is None:
            self.below += int(np.count_nonzero(below))
            self.inside += picked.size
        else:
            self.below += int(view.weights[below].sum())
            self.inside += int(picked_w.sum())
        if self.kind == "hist":
            if self.hist is None:
                self.hist = np.zeros(self.bins, dtype=np.int64)
            counts = np.bincount(self._bin(picked), weights=picked_w, minlength=self.bins)
            self.hist += counts.astype(np.int64)
        else:
            self.keep(picked, picked_w, view.v32.size, counted=True)

    def keep(
        self, picked: np.ndarray, picked_w: np.ndarray | None, block_size: int, counted: bool = False
    ) -> None:
        """Keep the values found inside (and count them, unless ``add`` already did)."""
        if not counted:
            self.inside += picked.size if picked_w is None else int(picked_w.sum())
        if self.overflow:
            return
        if picked.size > max(4096, block_size // 16):
            # Far more values than a sample bracket should hold: ties (a gripper at +-1, a dim that
            # rarely moves). Keep them as (value, count) pairs right away.
            picked, picked_w = _unique(picked, picked_w)
        self.kept.append((picked, picked_w))
        self._kept_size += picked.size
        if self._kept_size > self.cap:
            self._compress()

    def _compress(self) -> None:
        values = np.concatenate([v for v, _ in self.kept])
        weights = np.concatenate([np.ones(v.size, np.int64) if w is None else w for v, w in self.kept])
        unique, counts = _unique(values, weights)
        if unique.size > self.cap:
            self.overflow, self.kept, self._kept_size = True, [], 0
        else:
            self.kept, self._kept_size = [(unique, counts)], unique.size

    def _bin(self, v: np.ndarray) -> np.ndarray:
        width = (self.hi - self.lo) / self.bins
        if not width > 0:
            return np.zeros(v.size, dtype=np.int64)
        return np.clip(np.floor((v - self.lo) / width), 0, self.bins - 1).astype(np.int64)

    def finish(self) -> None:
        if self.kind != "collect" or self.overflow:
            return
        values = np.concatenate([v for v, _ in self.kept]) if self.kept else np.empty(0)
        if any(w is not None for _, w in self.kept):
            weights = np.concatenate([np.ones(v.size, np.int64) if w is None else w for v, w in self.kept])
            order = np.argsort(values, kind="stable")
            self._values, self._weights = values[order], np.cumsum(weights[order])
        else:
            self._values = values  # unsorted: selection and counting need no full sort
        self.kept, self._kept_size = [], 0

    @property
    def exact(self) -> bool:
        return self.kind == "collect" and not self.overflow and self._values is not None

    def holds_rank(self, r: int) -> bool:
        return self.exact and self.below <= r < self.below + self.inside

    def value_at(self, r: int) -> float:
        local = r - self.below
        if self._weights is None:
            if local not in self._selected:
                # Select every rank this bracket may be asked for at once (numpy asks for r and r+1).
                wanted = sorted({local, min(local + 1, self._values.size - 1)})
                self._values.partition(wanted)
                self._selected.update({k: float(self._values[k]) for k in wanted})
            return self._selected[local]
        return float(self._values[np.searchsorted(self._weights, local, side="right")])

    def count_le(self, x: float, strict: bool) -> int:
        """Values < x (strict) or <= x, valid for lo <= x <= hi."""
        if self._weights is None:
            return self.below + int(np.count_nonzero(self._values < x if strict else self._values <= x))
        pos = int(np.searchsorted(self._values, x, side="left" if strict else "right"))
        return self.below + (int(self._weights[pos - 1]) if pos else 0)


def _unique(values: np.ndarray, weights: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Distinct values and their total weights (counts when unweighted)."""
    unique, inverse = np.unique(values, return_inverse=True)
    counts = np.bincount(inverse, weights=weights, minlength=unique.size)
    return unique, counts.astype(np.int64)


def _f32_down(x: float) -> float:
    y = np.float32(x)
    return float(y if y <= x else np.nextafter(y, np.float32(-np.inf)))


def _f32_up(x: float) -> float:
    y = np.float32(x)
    return float(y if y >= x else np.nextafter(y, np.float32(np.inf)))


def _add_to_brackets(brackets: list[_Bracket], block: _Block, group: str, index: int) -> None:
    if not brackets:
        return
    view = block.view(group, index)
    fast = [b for b in brackets if b.kind == "collect" and not b.overflow] if view.weights is None else []
    for b in brackets:
        if b not in fast:
            b.add(view)
    if not fast:
        return
    # Unweighted values (delta chunks), the bulk of the work: one scan finds the positions of all values
    # that any bracket needs, then they are sorted into brackets on that small set. The lowest bracket
    # takes every value up to its top and the highest every value from its bottom (the q01 / q99 tails,
    # a few % of the values), so those two need no count of their own over the block.
    v32, total = view.v32, len(view.v32)
    fast.sort(key=lambda b: (b.lo, b.hi))
    low, high, middle = (fast[0], fast[-1], fast[1:-1]) if len(fast) > 1 else (None, None, fast)
    union = np.zeros(v32.shape, dtype=bool)
    if low is not None:
        np.less_equal(v32, low._hi32, out=union)
        above = v32 >= high._lo32
        high.below += total - int(np.count_nonzero(above))
        union |= above
    for b in middle:
        below = v32 < b._lo32
        b.below += int(np.count_nonzero(below))
        inside = v32 <= b._hi32
        inside ^= below
        union |= inside
    picked, _ = view.pick(union)
    picked32 = v32[union]
    if low is not None:
        low.below += int(np.count_nonzero(picked32 < low._lo32))
    for b in fast:
        mine = (picked32 >= b._lo32) & (picked32 <= b._hi32)
        b.keep(picked[mine], None, total)


class _Dim:
    """Accumulates one dimension: moments, min/max, and what its quantiles need."""

    def __init__(self, group: str, index: int, total: int, weighted: bool):
        self.group, self.index, self.total, self.weighted = group, index, total, weighted
        self.n, self.mean, self.m2 = 0, 0.0, 0.0
        self.min, self.max = math.inf, -math.inf
        self.mode = "memory"  # "memory" | "stream" | "hist"
        self.kept: list[tuple[np.ndarray, np.ndarray | None]] = []
        self.sample: np.ndarray | None = None
        self.brackets: list[_Bracket] = []
        self.values: np.ndarray | None = None  # memory mode: sorted values
        self.cum: np.ndarray | None = None  # memory mode: cumulative weights (None: unweighted)

    def merge(self, nb: int, mb: float, m2b: float, low: float, high: float) -> None:
        """Chan et al.'s merge of a block's (count, mean, M2) into the running ones; min/max too."""
        if nb == 0:
            return
        n = self.n + nb
        delta = mb - self.mean
        self.mean += delta * nb / n
        self.m2 += m2b + delta * delta * self.n * nb / n
        self.n = n
        self.min, self.max = min(self.min, low), max(self.max, high)

    def finish_memory(self) -> None:
        values = np.concatenate([v for v, _ in self.kept])
        if self.weighted:
            order = np.argsort(values, kind="stable")
            self.values, self.cum = values[order], np.cumsum(np.concatenate([w for _, w in self.kept])[order])
        else:
            self.values = np.sort(values)
        self.kept = []

    def order_stat(self, r: int) -> float | None:
        """Exact r-th smallest value (0-based), or None when no exact source holds it (yet)."""
        if self.mode == "memory":
            if self.cum is None:
                return float(self.values[r])
            return float(self.values[np.searchsorted(self.cum, r, side="right")])
        for b in self.brackets:
            if b.holds_rank(r):
                return b.value_at(r)
        return None

    def count(self, x: float, strict: bool) -> tuple[int, bool]:
        if self.mode == "memory":
            pos = int(np.searchsorted(self.values, x, side="left" if strict else "right"))
            if self.cum is None:
                return pos, True
            return (int(self.cum[pos - 1]) if pos else 0), True
        for b in self.brackets:
            if b.exact and b.lo <= x <= b.hi:
                return b.count_le(x, strict), True
        if x < self.min or (strict and x == self.min):
            return 0, True
        if x > self.max or (not strict and x == self.max):
            return self.n, True
        for b in self.brackets:
            if b.kind == "hist" and b.hist is not None and b.lo <= x <= b.hi:
                return b.below + _hist_count(b, x), False
        sample = self.sample if self.sample is not None and self.sample.size else None
        if sample is None:
            return round(self.n / 2), False
        pos = np.count_nonzero(sample < x if strict else sample <= x)
        return round(pos / sample.size * self.n), False


def _hist_count(b: _Bracket, x: float) -> int:
    width = (b.hi - b.lo) / b.bins
    if not width > 0:
        return b.inside
    pos = (x - b.lo) / width
    i = min(int(pos), b.bins - 1)
    return int(b.hist[:i].sum() + b.hist[i] * min(1.0, pos - i))


def _hist_order_stat(b: _Bracket, r: int) -> float:
    """Estimate of the r-th smallest value from a histogram bracket (within one bin width)."""
    width = (b.hi - b.lo) / b.bins
    cum = np.cumsum(b.hist)
    i = int(np.searchsorted(cum, r - b.below, side="right"))
    i = min(i, b.bins - 1)
    before = int(cum[i - 1]) if i else 0
    frac = (r - b.below - before + 0.5) / max(int(b.hist[i]), 1)
    return float(b.lo + width * (i + min(max(frac, 0.0), 1.0)))


# -- the computation ---------------------------------------------------------------------------------


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
    dims = [_Dim("state", i, frames, False) for i in range(state_dim)]
    dims += [_Dim("actions", i, n_act, not delta[i]) for i in range(action_dim)]

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
        work: Callable[[_Block], None],
        per_dim: Callable[[_Block, _Dim], None] | None = None,
        dims_of_pass: Sequence[_Dim] = (),
    ) -> None:
        threaded = workers > 1 and len(dims_of_pass) > 1
        with ThreadPoolExecutor(workers) if threaded else contextlib.nullcontext() as pool:
            for block in _blocks(episodes(), block_frames, horizon, delta):
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

    def pass_one(block: _Block) -> None:
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
            d.brackets = _sample_brackets(d, cap)
        else:
            d.brackets = [_Bracket(d.min, d.max, "hist", cap, bins=hist_bins)]

    # Pass 2 (streamed and histogram dims): moments of streamed dims and the brackets.
    second = [d for d in dims if d.mode != "memory"]
    if second:

        def pass_two(block: _Block, d: _Dim) -> None:
            if d.mode == "stream":
                d.merge(*block.moments(d.group, d.index))
            _add_to_brackets(d.brackets, block, d.group, d.index)

        run_pass(lambda block: None, pass_two, second)
        passes += 1
        for d in second:
            for b in d.brackets:
                b.finish()

    # Further passes only when a sample bracket missed its rank (rare): narrow down, exactly.
    for _ in range(_MAX_REFINE_ROUNDS):
        todo = {d: _missing_ranks(d) for d in streamed}
        todo = {d: r for d, r in todo.items() if r}
        if not todo:
            break
        fresh = {}
        for d, ranks in todo.items():
            # Neighbouring ranks usually land in the same interval: one bracket serves both.
            unique = {}
            for r in ranks:
                b = _refine_bracket(d, r, cap, hist_bins)
                unique.setdefault((b.lo, b.hi, b.kind), b)
            fresh[d] = list(unique.values())
        for d, brackets in fresh.items():
            d.brackets += brackets

        def pass_refine(block: _Block, d: _Dim, fresh=fresh) -> None:
            _add_to_brackets(fresh[d], block, d.group, d.index)

        run_pass(lambda block: None, pass_refine, list(fresh))
        passes += 1
        for brackets in fresh.values():
            for b in brackets:
                b.finish()

    results = {g: [_result(d) for d in dims if d.group == g] for g in ("state", "actions")}
    return ChunkStats(
        state=results["state"], actions=results["actions"], method=method, passes=passes, frames=frames
    )


def _target_ranks(n: int) -> list[int]:
    ranks = set()
    for q in QUANTILES.values():
        virtual = np.float64(n - 1) * np.float64(q)
        lower = min(math.floor(virtual), n - 1)
        ranks.update({lower, min(lower + 1, n - 1)})
    return sorted(ranks)


def _sample_brackets(d: _Dim, cap: int) -> list[_Bracket]:
    """Per quantile, an interval of sample order statistics that holds the target rank with near certainty."""
    s = d.sample.size
    if s == 0:
        return [_Bracket(-math.inf, math.inf, "collect", cap) for _ in QUANTILES]
    edges = []
    for q in QUANTILES.values():
        centre = q * (s - 1)
        spread = _BRACKET_Z * math.sqrt(s * q * (1 - q)) + 2
        edges.append((math.floor(centre - spread), math.ceil(centre + spread) + 1))
    inside = sorted({i for pair in edges for i in pair if 0 <= i < s})
    # Only these order statistics of the sample are needed: a partition, not a sort.
    picked = dict(zip(inside, np.partition(d.sample, inside)[inside].tolist())) if inside else {}
    return [
        _Bracket(picked.get(i_lo, -math.inf), picked.get(i_hi, math.inf), "collect", cap)
        for i_lo, i_hi in edges
    ]


def _missing_ranks(d: _Dim) -> list[int]:
    return [r for r in _target_ranks(d.n) if d.order_stat(r) is None]


def _refine_bracket(d: _Dim, r: int, cap: int, bins: int) -> _Bracket:
    """A narrower bracket that surely contains the r-th smallest value, from what earlier passes counted."""
    lo, hi = d.min, d.max
    n_lo, n_hi = 0, d.n  # values < lo, values <= hi (upper estimates are fine: only for planning)
    for b in d.brackets:
        if b.below <= r and b.lo >= lo:
            lo, n_lo = b.lo, b.below
        if b.below + b.inside <= r and b.hi >= lo:
            lo, n_lo = b.hi, b.below + b.inside
        if b.below > r and b.lo <= hi:
            hi, n_hi = b.lo, b.below
        if b.below + b.inside > r and b.hi <= hi:
            hi, n_hi = b.hi, b.below + b.inside
        if b.kind == "hist" and b.hist is not None and b.lo <= lo <= hi <= b.hi:
            # Narrow to the bins around the rank (one bin of slack each side for rounding).
            cum = b.below + np.cumsum(b.hist)
            i = int(np.searchsorted(cum, r, side="right"))
            width = (b.hi - b.lo) / b.bins
            lo, hi = max(lo, b.lo + (i - 1) * width), min(hi, b.lo + (i + 2) * width)
            n_lo, n_hi = int(cum[i - 2]) if i >= 2 else b.below, int(cum[min(i + 1, b.bins - 1)])
    # Collect when few values remain, or right after a histogram narrowed the range (equal values then
    # compress); a collect bracket that still overflows is followed by a histogram of its range.
    previous = [b for b in d.brackets if b.rank == r]
    stuck = bool(previous) and n_hi - n_lo >= previous[-1].inside
    kind = "collect" if n_hi - n_lo <= cap or stuck or not hi > lo else "hist"
    return _Bracket(lo, hi, kind, cap, bins=bins, rank=r)


def _result(d: _Dim) -> DimResult:
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
            return _hist_order_stat(min(hist, key=lambda b: b.hi - b.lo), r) if hist else d.mean

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
