"""Blocks of whole episodes and the chunk values they hold, as training counts them.

For an episode of length T and horizon H, chunk ``t`` holds ``actions[min(t+k, T-1)] - delta *
state[t]`` for ``k < H`` (the last frame repeats past the end, as in the loader). A :class:`Block` hands
out one dim at a time: state per frame; a non-delta action dim as N values with multiplicities
(:func:`chunk_multiplicity`); a delta dim through a sliding window over the padded actions (each
episode followed by H-1 copies of its last frame), with moments and min/max computed in O(N).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


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


def as_run(item: Episode | Episodes) -> Episodes:
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


class View:
    """One dim of a block: float32 values to classify, weights, and exact float64 values on demand.

    ``v32`` is built on first use: a delta dim classified row by row (``rows``) never needs all of it.
    """

    def __init__(
        self,
        make_v32: Callable[[], np.ndarray],
        weights: np.ndarray | None,
        pick: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray | None]],
        exact32: bool = False,
        rows: RowView | None = None,
    ):
        self._make_v32 = make_v32
        self.weights = weights
        self.pick = pick
        self.exact32 = exact32  # True when v32 holds the values exactly (float32 data, no delta)
        self.rows = rows

    @cached_property
    def v32(self) -> np.ndarray:
        return self._make_v32()


@dataclass(frozen=True)
class RowView:
    """A delta dim as N rows (chunks) of H float32 values, with each row's exact float32 min and max.

    The bounds let a classifier settle whole rows that lie below, above or inside an interval with
    one comparison, and expand only the rows an interval edge cuts through.
    """

    lo: np.ndarray  # [n] float32: min over the row of the float32 values
    hi: np.ndarray  # [n] float32: max
    horizon: int
    values32: Callable[[np.ndarray], np.ndarray]  # row indices [m] -> float32 values [m, H]
    exact: Callable[[np.ndarray, np.ndarray], np.ndarray]  # (rows, timesteps) -> float64 values


def window_min_max(x: np.ndarray, starts: np.ndarray, h: int) -> tuple[np.ndarray, np.ndarray]:
    """min and max of ``x[i : i + h]`` (along axis 0) for each i in ``starts`` (windows inside x).

    Doubling: after k passes ``low[i]`` is the min of ``x[i : i + 2**k]``; two overlapping windows of
    the largest power of two <= h then cover ``[i, i + h)``. log2(h) elementwise passes over x, which
    numpy vectorises (a running accumulate, the other O(N) way, does not).
    """
    low = high = x
    width = 1
    while 2 * width <= h:
        low, high = np.minimum(low[:-width], low[width:]), np.maximum(high[:-width], high[width:])
        width *= 2
    tail = starts + (h - width)
    return np.minimum(low[starts], low[tail]), np.maximum(high[starts], high[tail])


class Block:
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
        self._delta_stats: dict | None = None
        self._padded32: dict[int, np.ndarray] = {}  # delta dims on float32 data, filled with the moments
        self._row_bounds: dict[int, tuple[np.ndarray, np.ndarray]] = {}
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

    def view(self, group: str, dim: int) -> View:
        """The dim's values as float32 for classification, and a way to fetch exact float64 ones."""
        if group == "actions" and self.delta[dim] and self.float32_data:
            return self._delta_view(dim)
        v, w = self.values(group, dim)
        exact32 = self.float32_data and not (group == "actions" and self.delta[dim])
        return View(
            lambda: v.astype(np.float32), w, lambda mask: (v[mask], None if w is None else w[mask]), exact32
        )

    def _delta_view(self, dim: int) -> View:
        # Classify on the float32 difference of float32 inputs: IEEE rounds it correctly, so it is a
        # monotone function of the exact (float64) value, and nothing float64 of size N x H is ever
        # materialised; the few values kept are recomputed in float64 from their positions.
        h = self.horizon
        self._delta_moments(dim)  # builds the float32 columns and the row bounds
        _, first, _, _ = self._padding()
        column, state = self.padded_actions[:, dim], self.state[:, dim]
        state32 = state.astype(np.float32)
        # No copy: chunk t's values are windows[first[t]].
        windows = sliding_window_view(self._padded32[dim], h)

        def values32(rows: np.ndarray) -> np.ndarray:
            out = windows[first[rows]]  # [m, H] copy
            out -= state32[rows, None]
            return out

        def exact(t: np.ndarray, k: np.ndarray) -> np.ndarray:
            return column[first[t] + k] - state[t]

        def pick(mask: np.ndarray) -> tuple[np.ndarray, None]:
            return exact(*np.divmod(np.flatnonzero(mask), h)), None

        low, high = self._row_bounds[dim]
        rows = RowView(low, high, h, values32, exact)
        return View(lambda: values32(np.arange(self.n)).reshape(-1), None, pick, rows=rows)

    def prepare(self) -> None:
        """Build the lazily cached helpers now (before several threads use the block)."""
        self._padding()
        _ = self.mult, self.float32_data, self.padded_actions
        if self.delta.any():
            self._delta_moments(int(np.flatnonzero(self.delta)[0]))

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
        if self._delta_stats is None:
            self._delta_stats = self._all_delta_moments()
        return self._delta_stats[dim]

    def _all_delta_moments(self) -> dict[int, tuple[int, float, float, float, float]]:
        # All delta dims at once, in O(N): chunk t's action sum W_t comes from a cumulative sum (the last
        # frame repeats past the episode end), and over all chunk values
        #   sum (a - s) = sum_j mult_j a_j - H sum_t s_t,
        #   sum (a - s - mean)^2 = sum_j mult_j a_j^2 - 2 sum_t s'_t W_t + H sum_t s'_t^2,  s' = s + mean.
        # Each episode is first centred on its mean action: shifting a and s together leaves every
        # a - s unchanged and keeps the sums (and their cancellation) small.
        h, lengths = self.horizon, self.lengths
        dims = np.flatnonzero(self.delta)
        starts = np.cumsum(lengths) - lengths
        # [dims, frames] layout: every reduction below runs along contiguous memory.
        actions, state = self.actions[:, dims].T.copy(), self.state[:, dims].T.copy()
        shift = np.repeat(np.add.reduceat(actions, starts, axis=1) / lengths, lengths, axis=1)
        a, s = actions - shift, state - shift
        t = np.arange(self.n)
        end = np.repeat(starts + lengths, lengths)  # one past the last frame of t's episode
        stop = np.minimum(t + h, end)
        c = np.concatenate((np.zeros((dims.size, 1)), np.cumsum(a, axis=1)), axis=1)
        window_sum = c[:, stop] - c[:, : self.n]  # c[:, t] for every t
        # Chunks that run past their episode's end repeat its last action for the missing steps.
        short = np.flatnonzero(stop < t + h)
        window_sum[:, short] += (t[short] + h - stop[short]) * a[:, end[short] - 1]
        mult = self.mult.astype(np.float64)
        count = self.n * h
        mean = (a @ mult - h * s.sum(axis=1)) / count
        s += mean[:, None]
        m2 = (a * a) @ mult - 2 * np.einsum("ij,ij->i", s, window_sum) + h * np.einsum("ij,ij->i", s, s)
        m2 = np.maximum(m2, 0.0)
        # Extremes: per-chunk window minima / maxima of the padded actions; min_k fl(a_k - s) ==
        # fl(min_k a_k - s) because subtraction rounds monotonically. On float32 data they are also the
        # exact float32 bounds of each row of the classified values (RowView).
        _, first, _, _ = self._padding()
        columns = self.padded_actions[:, dims]
        if self.float32_data:
            columns = columns.astype(np.float32)
            by_dim = np.ascontiguousarray(columns.T)  # contiguous rows: the window gathers stay fast
            self._padded32 = {int(d): by_dim[j] for j, d in enumerate(dims)}
        low, high = window_min_max(columns, first, h)
        low, high = low.T, high.T  # [dims, frames], like ``state``: reductions along contiguous rows
        if self.float32_data:
            state32 = state.astype(np.float32)
            self._row_bounds = {
                int(d): (low[j] - state32[j], high[j] - state32[j]) for j, d in enumerate(dims)
            }
        low, high = (low - state).min(axis=1), (high - state).max(axis=1)
        return {
            int(d): (count, float(mean[j]), float(m2[j]), float(low[j]), float(high[j]))
            for j, d in enumerate(dims)
        }

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


def blocks(
    runs: Iterable[Episode | Episodes], block_frames: int, horizon: int, delta: np.ndarray
) -> Iterator[Block]:
    """Blocks of about ``block_frames`` frames, cut at episode boundaries (views where possible)."""
    pending: list[Episodes] = []
    size = 0
    for run in map(as_run, runs):
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
                yield Block(pending, horizon, delta)
                pending, size = [], 0
    if pending:
        yield Block(pending, horizon, delta)
