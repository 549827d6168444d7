"""Exact order statistics of a stream of values, with memory bounded by a budget.

A :class:`Bracket` watches an interval [lo, hi] of one dim: over a pass it counts the values below lo
exactly and keeps the values inside (as (value, count) pairs when they repeat), so the r-th smallest
value overall is the (r - below)-th inside, if it falls there. Brackets come from a uniform sample
(:func:`sample_brackets`); one that misses its rank is narrowed by further passes, first with a
histogram of its interval, then by collecting the right bins (:func:`refine_bracket`).

Values are classified on a float32 copy (twice as fast as float64); bracket edges are float32 numbers
rounded outwards. Rounding is monotone, so the values classified below lo are all smaller than the ones
classified inside, and ranks stay exact.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from steps.stats.chunk_blocks import Block, RowView, View

QUANTILES: dict[str, float] = {"q01": 0.01, "q10": 0.10, "q50": 0.50, "q90": 0.90, "q99": 0.99}
# Width of the sample bracket around a target rank, in standard deviations of the sample rank.
BRACKET_Z = 6.0


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


@dataclass(eq=False)
class Bracket:
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

    def add(self, view: View) -> None:
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


def add_to_brackets(brackets: list[Bracket], block: Block, group: str, index: int) -> None:
    if not brackets:
        return
    view = block.view(group, index)
    fast = [b for b in brackets if b.kind == "collect" and not b.overflow] if view.weights is None else []
    for b in brackets:
        if b not in fast:
            b.add(view)
    if not fast:
        return
    if view.rows is not None:
        _add_by_rows(fast, view.rows)
    else:
        _add_unweighted(fast, view)


def _add_by_rows(brackets: list[Bracket], rows: RowView) -> None:
    """Delta chunks, the bulk of the work: settle whole rows by their bounds, expand only the rest.

    A row entirely below a bracket adds H to its count, one entirely above adds nothing; only rows that
    reach into [lo, hi] are expanded and compared value by value. A chunk spans a fraction of its dim's
    range, so most rows miss most brackets (the q01 / q99 tails above all).
    """
    h = rows.horizon
    total = rows.lo.size * h
    for b in brackets:
        b.below += h * int(np.count_nonzero(rows.hi < b._lo32))
        touching = np.flatnonzero((rows.hi >= b._lo32) & (rows.lo <= b._hi32))
        if not touching.size:
            continue
        v32 = rows.values32(touching)
        below = v32 < b._lo32
        b.below += int(np.count_nonzero(below))
        inside = v32 <= b._hi32
        inside ^= below
        t, k = np.divmod(np.flatnonzero(inside), h)
        b.keep(rows.exact(touching[t], k), None, total)


def _add_unweighted(fast: list[Bracket], view: View) -> None:
    # One scan finds the positions of all values that any bracket needs, then they are sorted into
    # brackets on that small set. The lowest bracket takes every value up to its top and the highest
    # every value from its bottom (the q01 / q99 tails, a few % of the values), so those two need no
    # count of their own over the block.
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


class DimAccumulator:
    """Accumulates one dimension: moments, min/max, and what its quantiles need."""

    def __init__(self, group: str, index: int, total: int, weighted: bool):
        self.group, self.index, self.total, self.weighted = group, index, total, weighted
        self.n, self.mean, self.m2 = 0, 0.0, 0.0
        self.min, self.max = math.inf, -math.inf
        self.mode = "memory"  # "memory" | "stream" | "hist"
        self.kept: list[tuple[np.ndarray, np.ndarray | None]] = []
        self.sample: np.ndarray | None = None
        self.brackets: list[Bracket] = []
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


def _hist_count(b: Bracket, x: float) -> int:
    width = (b.hi - b.lo) / b.bins
    if not width > 0:
        return b.inside
    pos = (x - b.lo) / width
    i = min(int(pos), b.bins - 1)
    return int(b.hist[:i].sum() + b.hist[i] * min(1.0, pos - i))


def hist_order_stat(b: Bracket, r: int) -> float:
    """Estimate of the r-th smallest value from a histogram bracket (within one bin width)."""
    width = (b.hi - b.lo) / b.bins
    cum = np.cumsum(b.hist)
    i = int(np.searchsorted(cum, r - b.below, side="right"))
    i = min(i, b.bins - 1)
    before = int(cum[i - 1]) if i else 0
    frac = (r - b.below - before + 0.5) / max(int(b.hist[i]), 1)
    return float(b.lo + width * (i + min(max(frac, 0.0), 1.0)))


def target_ranks(n: int) -> list[int]:
    ranks = set()
    for q in QUANTILES.values():
        virtual = np.float64(n - 1) * np.float64(q)
        lower = min(math.floor(virtual), n - 1)
        ranks.update({lower, min(lower + 1, n - 1)})
    return sorted(ranks)


def sample_brackets(d: DimAccumulator, cap: int) -> list[Bracket]:
    """Per quantile, an interval of sample order statistics that holds the target rank with near certainty."""
    s = d.sample.size
    if s == 0:
        return [Bracket(-math.inf, math.inf, "collect", cap) for _ in QUANTILES]
    edges = []
    for q in QUANTILES.values():
        centre = q * (s - 1)
        spread = BRACKET_Z * math.sqrt(s * q * (1 - q)) + 2
        edges.append((math.floor(centre - spread), math.ceil(centre + spread) + 1))
    inside = sorted({i for pair in edges for i in pair if 0 <= i < s})
    # A sort of a float32 copy: numpy's vectorised float32 sort beats a partition at these ~20 ranks
    # (3-4x here). Edges are rounded to float32 anyway, and any edges give exact results (the second
    # pass counts), so rounding the sample first changes nothing but the odd ulp of an edge.
    ordered = np.sort(d.sample.astype(np.float32))
    picked = dict(zip(inside, ordered[inside].tolist())) if inside else {}
    return [
        Bracket(picked.get(i_lo, -math.inf), picked.get(i_hi, math.inf), "collect", cap)
        for i_lo, i_hi in edges
    ]


def missing_ranks(d: DimAccumulator) -> list[int]:
    return [r for r in target_ranks(d.n) if d.order_stat(r) is None]


def refine_bracket(d: DimAccumulator, r: int, cap: int, bins: int) -> Bracket:
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
    return Bracket(lo, hi, kind, cap, bins=bins, rank=r)
