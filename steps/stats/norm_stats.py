"""Normalization statistics step: exact, streamed, guarded, cached. No Metaflow needed.

    python -m steps.stats.norm_stats --config_type pi0_libero --dataset /data/libero --out norm_stats.json

What it computes (openpi's statistics, over what training normalizes): per dimension of ``state`` (once per frame) and ``actions``
(every timestep of every action chunk of the config's horizon, after the delta transform, with the last
frame repeated past the episode end), over the training episodes only: count, mean, std, min, max,
q01, q10, q50, q90, q99. Quantiles are ``numpy.quantile(..., method="linear")`` over all those values,
exactly (see :mod:`steps.stats.chunk_stats` for how that streams). Only the numeric parquet columns of the
state and action keys are read; never images or video.

Output: openpi's ``norm_stats.json`` layout ``{"norm_stats": {"state": {...}, "actions": {...}}}`` plus a
``"metadata"`` block (dataset fingerprint, config type, horizon, delta mask, episodes, counts, method,
error bounds, guards, per-dimension report).

Guard for nearly constant dimensions (openpi#814): a dim whose std or q99 - q01 is below ``min_scale``
is reported (logged warning, ``metadata.guards.floored`` with its name, index and raw values), and its
scales are floored so that every training value normalizes to within ``max_abs_normalized``:

- ``std`` becomes ``max(std, min_scale, max|x - mean| / max_abs_normalized)``;
- the q01..q99 band keeps its centre c and gets half-width
  ``max((q99 - q01) / 2, min_scale / 2, max|x - c| / max_abs_normalized)``.

Flooring only ever widens a scale, so normalized values shrink; the floored values are what
``norm_stats.json`` holds (what training and inference use), the raw ones stay in the metadata.

Report (``metadata.report``): per dim, the fraction of training values outside [q01, q99], the fraction
outside [-1, 1] after normalization (config's mode, floored statistics), the largest |normalized value|,
and whether those counts are exact (in streaming mode the zscore band is estimated from the sample).

Checked on the way (every episode before training): the state and action values of the training
episodes and of ``check_episodes`` (the held-out ones) are finite; a NaN or inf fails naming key,
dimension, episode, frame and file. A cached result stands for that check too.

Cache (``$VLA_SFT_CACHE/norm_stats``), keyed by content. A result is stored as ``<content key>.json``,
the content key a hash of the settings (keys, horizon, delta mask, normalization, method, guards), the
episodes, and a digest of every state and action value read (blake2b, folded into the statistics pass
that reads them anyway, see benchmarks/RESULTS.md for its cost). A lookup must not read the data, so an
index entry ``index/<source key>.json`` names the result for a *source*: the settings, episodes, the meta
files (``lerobot_format.fingerprint``) and either the Hub commit (``revision``: a snapshot never changes)
or, for local and S3 folders, each data file's identity (``data_adapters.file_identity``: inode, size,
mtime_ns, ctime_ns and a digest of its parquet footer). So any write to a data file, a replaced or
re-exported file, or another copy of the dataset recomputes (the same values give the same content key);
an unchanged dataset returns the stored result in milliseconds, with ``metadata.dataset.root`` naming the
folder of this call. The result file is written before its index entry, both atomically.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from steps.cache import atomic_write_text, cache_dir_for, cache_key

log = logging.getLogger(__name__)

# Bump when the numbers for the same inputs change: it invalidates cached results.
STATS_VERSION = 1
DEFAULT_MIN_SCALE = 1e-3
DEFAULT_MAX_ABS_NORMALIZED = 5.0
NORM_EPS = 1e-6  # the epsilon of data_adapters.normalization


def _with_progress(source, total_frames: int, every_s: float | None):
    """``source`` with a progress line per pass at most every ``every_s`` seconds (default 10 s): only a
    dataset that takes that long to read prints anything."""
    from steps.progress import DEFAULT_EVERY_S, Progress

    passes = [0]

    def read():
        passes[0] += 1
        progress = Progress(f"norm stats pass {passes[0]}", total_frames, unit="frames",
                            every_s=DEFAULT_EVERY_S if every_s is None else every_s)  # fmt: skip
        for item in source():
            yield item
            progress.advance(len(item.state))
        if progress.lines:
            progress.finish()

    return read


def compute_norm_stats(
    cfg: Any,
    dataset_root: str | Path,
    episodes: Sequence[int] | None = None,
    *,
    check_episodes: Sequence[int] | None = None,
    revision: str | None = None,
    out_path: str | Path | None = None,
    cache_dir: str | Path | None = None,
    use_cache: bool = True,
    method: str = "exact",
    memory_budget_mb: float = 1024,
    min_scale: float = DEFAULT_MIN_SCALE,
    max_abs_normalized: float = DEFAULT_MAX_ABS_NORMALIZED,
    hist_bins: int = 1 << 14,
    seed: int = 0,
    workers: int = 1,
    progress_every_s: float | None = None,
):
    """Statistics of ``cfg``'s state and actions over ``episodes`` of the dataset at ``dataset_root``.

    Args:
        cfg: a ConfigType, or a config type name / YAML path.
        dataset_root: local LeRobot dataset folder (see :func:`steps.fetch.dataset.fetch_dataset`).
        episodes: the training episodes (default: all episodes).
        check_episodes: more episodes whose state and action values must be finite (the held-out ones),
            not counted in the statistics.
        revision: the Hub commit the dataset folder is a snapshot of: the cache then trusts it instead of
            the data files' identities (None for local and S3 folders).
        out_path: also write ``norm_stats.json`` here (atomically).
        cache_dir: cache folder (default ``$VLA_SFT_CACHE/norm_stats`` or ``~/.cache/vla-sft/norm_stats``).
        use_cache: False recomputes (and refreshes the cache entry).
        method: "exact" (default) or "histogram" (quantiles within one bin width, stated in metadata).
        memory_budget_mb: memory the computation may use beyond one data file (exact in any case).
        min_scale: std or q99 - q01 below this flags a dim as nearly constant (see module docstring).
        max_abs_normalized: the limit |normalized training value| that flooring guarantees.
        hist_bins: histogram bins (method "histogram").
        seed: sampling seed (changes the work done, never the exact result).
        workers: threads over the dims of each block (numpy releases the GIL in the per-dim work);
            the result does not depend on it.
        progress_every_s: a progress line per pass over the data at most this often (default 10 s).

    Returns:
        data_adapters.normalization.NormStats (float32 statistics + metadata).

    Raises:
        ValueError (DatasetFormatError for the data): the dataset does not fit the config type, unknown
            episodes, no frames, NaN/inf in a state or action value of a training or checked episode (naming
            key, dimension, episode, frame and file), or bad arguments.
    """
    from data_adapters.config_types import ConfigType
    from data_adapters.lerobot_format import fingerprint, read_meta
    from data_adapters.normalization import NormStats
    from data_adapters.registry import get_config_type

    cfg = cfg if isinstance(cfg, ConfigType) else get_config_type(str(cfg))
    if not min_scale > 0 or not max_abs_normalized >= 1:
        raise ValueError(
            f"min_scale must be > 0 and max_abs_normalized >= 1, got {min_scale}, {max_abs_normalized}"
        )
    root = Path(dataset_root)
    settings = {
        "stats_version": STATS_VERSION,
        "state_keys": list(cfg.state_keys),
        "action_keys": list(cfg.action_keys),
        "horizon": cfg.action_horizon,
        "delta_mask": list(cfg.delta_mask),
        "normalization": cfg.normalization,
        "method": method,
        "hist_bins": hist_bins if method == "histogram" else None,
        "min_scale": min_scale,
        "max_abs_normalized": max_abs_normalized,
    }
    meta = read_meta(root)
    _check_numeric_schema(cfg, meta)
    selected = meta.select(episodes)
    episode_ids = [ep.index for ep in selected]
    checked = (
        [ep for ep in meta.select(check_episodes) if ep.index not in set(episode_ids)]
        if check_episodes
        else []
    )
    wanted = "all" if episodes is None else episode_ids
    dataset_fingerprint = fingerprint(root)
    cache = cache_dir_for("norm_stats", cache_dir)
    scope = {**settings, "episodes": wanted, "checked": [ep.index for ep in checked]}
    source_key = cache_key({**scope, "fingerprint": dataset_fingerprint,
                            "source": _source_identity(root, [*selected, *checked], revision)})  # fmt: skip
    if use_cache:
        stats = _cached(cache, source_key, root)
        if stats is not None:
            if out_path is not None:
                atomic_write_text(out_path, _dumps(stats))
            return stats

    from steps.stats.chunk_stats import compute_chunk_stats
    from steps.stats.numeric_columns import episode_source, read_numeric_file

    started = time.perf_counter()
    digest = hashlib.blake2b(digest_size=16)
    for rel, eps in _by_file(
        checked
    ).items():  # finite check of the held-out episodes (raises naming the value)
        digest.update(
            read_numeric_file(meta, rel, eps, list(dict.fromkeys([*cfg.state_keys, *cfg.action_keys])))
        )
    budget = int(memory_budget_mb * (1 << 20))
    source = episode_source(meta, selected, cfg.state_keys, cfg.action_keys, keep_bytes=budget // 4)
    source = _with_progress(source, sum(ep.length for ep in selected), progress_every_s)
    result = compute_chunk_stats(
        _digested(source, digest),
        [ep.length for ep in selected],
        state_dim=cfg.state_dim,
        action_dim=cfg.action_dim,
        horizon=cfg.action_horizon,
        delta_mask=cfg.delta_mask,
        method=method,
        memory_budget_bytes=budget,
        hist_bins=hist_bins,
        seed=seed,
        workers=workers,
    )
    blocks, floored, report, bounds = {}, [], {}, {}
    for name, dims, keys in (
        ("state", result.state, cfg.state_keys),
        ("actions", result.actions, cfg.action_keys),
    ):
        labels = dim_labels(meta.features, keys)
        stats, block_floored = _guarded_stats(dims, labels, name, min_scale, max_abs_normalized)
        blocks[name] = stats
        floored += block_floored
        report[name] = _report(dims, stats, labels, cfg.normalization)
        bounds[name] = {q: [d.error_bound[q] for d in dims] for q in dims[0].error_bound}
    for entry in floored:
        log.warning("norm stats: nearly constant %s dim %d (%s): %s; scale floored", entry["block"],
                    entry["index"], entry["name"], "; ".join(entry["reasons"]))  # fmt: skip
    metadata = {
        "generator": "vla-sft steps.stats.norm_stats",
        **settings,
        "config_type": cfg.name,
        "dataset": {
            "root": str(root.resolve()),
            "fingerprint": dataset_fingerprint,
            "content_digest": digest.hexdigest(),
            "revision": revision,
            "codebase_version": meta.version,
        },
        "episodes": episode_ids,
        "num_episodes": len(episode_ids),
        "frames": result.frames,
        "counts": {"state": result.frames, "actions": result.frames * cfg.action_horizon},
        "quantile_definition": "numpy.quantile(method='linear') over all counted values",
        "error_bound": bounds,
        "passes": result.passes,
        "seconds": round(time.perf_counter() - started, 3),
        "guards": {"floored": floored},
        "report": report,
        "cache_key": cache_key({**scope, "content": digest.hexdigest()}),
    }
    stats = NormStats(state=blocks["state"], actions=blocks["actions"], metadata=metadata)
    text = _dumps(stats)
    # The result first, then the index entry that points to it: a reader never follows a dangling entry.
    atomic_write_text(cache / f"{metadata['cache_key']}.json", text)
    atomic_write_text(
        cache / "index" / f"{source_key}.json", json.dumps({"result": f"{metadata['cache_key']}.json"})
    )
    if out_path is not None:
        atomic_write_text(out_path, text)
    return stats


def _source_identity(root: Path, episodes, revision: str | None) -> dict:
    """What a cached result is trusted for without reading data: a Hub commit, else each data file's identity."""
    if revision is not None:
        return {"hub_revision": revision}
    from data_adapters.file_identity import file_identity

    return {rel: file_identity(root / rel) for rel in sorted({ep.data_path for ep in episodes})}


def _cached(cache: Path, source_key: str, root: Path):
    """The stored result for this source (its metadata naming ``root``), or None."""
    from data_adapters.normalization import NormStats

    try:
        entry = json.loads((cache / "index" / f"{source_key}.json").read_text())
        stats = NormStats.load(cache / entry["result"])
    except (OSError, ValueError, KeyError, TypeError):
        return None  # no entry, or one whose result was removed: recompute
    log.info("norm stats: cache hit %s", cache / entry["result"])
    if isinstance(stats.metadata.get("dataset"), dict):
        stats.metadata["dataset"]["root"] = str(root.resolve())
    return stats


def _by_file(episodes) -> dict[str, list]:
    out: dict[str, list] = {}
    for ep in episodes:
        out.setdefault(ep.data_path, []).append(ep)
    return out


def _digested(source, digest):
    """``source`` (a re-iterable of Episodes runs) that feeds each run's values to ``digest`` once, in the
    order first read, however many passes the statistics make."""
    seen: set[int] = set()

    def read():
        for run in source():
            first = int(run.indices[0])
            if first not in seen:
                seen.add(first)
                for part in (run.indices, run.lengths, run.state, run.actions):
                    digest.update(np.ascontiguousarray(part))
            yield run

    return read


def _check_numeric_schema(cfg, meta) -> None:
    """The state and action keys exist, are numeric and have the config type's dims.

    Only what statistics need: cameras are checked by the fetch step, so a numeric-only copy of a
    dataset gets statistics too.
    """
    for role, keys, dim_name, dim in (
        ("state", cfg.state_keys, "state_dim", cfg.state_dim),
        ("action", cfg.action_keys, "action_dim", cfg.action_dim),
    ):
        meta.require_keys(keys, role=f"config type {cfg.name!r} {role}")
        dims = {key: meta.feature_dim(key) for key in keys}
        if sum(dims.values()) != dim:
            raise ValueError(f"config type {cfg.name!r}: {role} keys {dims} of {meta.root} sum to "
                             f"{sum(dims.values())} dims, but {dim_name} is {dim}")  # fmt: skip


def dim_labels(features: dict, keys: Sequence[str]) -> list[str]:
    """One label per concatenated dim: ``key[i]``, plus the feature's own name for it when it has one."""
    labels = []
    for key in keys:
        ft = features[key]
        dim = int(math.prod(ft.get("shape") or [1]))
        names = ft.get("names")
        if isinstance(names, dict) and len(names) == 1:
            names = next(iter(names.values()))
        names = names if isinstance(names, list) and len(names) == dim else [None] * dim
        labels += [f"{key}[{i}]" + (f" {n}" if isinstance(n, str) and n else "") for i, n in enumerate(names)]
    return labels


# -- guards and report -------------------------------------------------------------------------------


def _guarded_stats(dims, labels, block: str, min_scale: float, limit: float):
    """Stats (float32) with floored scales for nearly constant dims, and the list of floored dims."""
    from data_adapters.normalization import Stats

    values = {k: np.array([getattr(d, k) for d in dims]) for k in ("mean", "std", "min", "max")}
    for q in dims[0].quantiles:
        values[q] = np.array([d.quantiles[q] for d in dims])
    floored = []
    # A hair of slack so the float32 copies still keep every value within the limit.
    slack = 1 + 1e-5
    for i, d in enumerate(dims):
        q01, q99 = d.quantiles["q01"], d.quantiles["q99"]
        reasons = []
        if d.std < min_scale:
            reasons.append(f"std {d.std:.3g} < min_scale {min_scale:g}")
        if q99 - q01 < min_scale:
            reasons.append(f"q99 - q01 = {q99 - q01:.3g} < min_scale {min_scale:g}")
        if not reasons:
            continue
        std = max(d.std, min_scale, max(d.max - d.mean, d.mean - d.min) / limit * slack)
        centre = (q01 + q99) / 2
        half = max((q99 - q01) / 2, min_scale / 2, max(d.max - centre, centre - d.min) / limit * slack)
        values["std"][i], values["q01"][i], values["q99"][i] = std, centre - half, centre + half
        floored.append({
            "block": block, "index": i, "name": labels[i], "reasons": reasons,
            "raw": {"std": d.std, "q01": q01, "q99": q99, "min": d.min, "max": d.max},
            "used": {"std": std, "q01": centre - half, "q99": centre + half},
        })  # fmt: skip
    stats = Stats(
        mean=values["mean"], std=values["std"], q01=values["q01"], q99=values["q99"], min=values["min"],
        max=values["max"], q10=values["q10"], q50=values["q50"], q90=values["q90"], count=dims[0].count,
    )  # fmt: skip
    return stats, floored


def _report(dims, stats, labels, mode: str) -> list[dict]:
    """Per dim: share of values outside [q01, q99] (raw) and outside [-1, 1] after normalization."""
    out = []
    for i, d in enumerate(dims):
        n = d.count
        below, exact_lo = d.count_below(d.quantiles["q01"])
        upto, exact_hi = d.count_at_most(d.quantiles["q99"])
        # The band that normalizes into [-1, 1], from the float32 statistics training uses.
        if mode == "quantile":
            q01, q99 = float(stats.q01[i]), float(stats.q99[i])
            lo, hi = q01, q01 + (q99 - q01 + NORM_EPS)
            scale, offset = (q99 - q01 + NORM_EPS) / 2, q01 + (q99 - q01 + NORM_EPS) / 2
        else:
            mean, std = float(stats.mean[i]), float(stats.std[i])
            lo, hi = mean - (std + NORM_EPS), mean + (std + NORM_EPS)
            scale, offset = std + NORM_EPS, mean
        unit_below, exact_a = d.count_below(lo)
        unit_upto, exact_b = d.count_at_most(hi)
        out.append({
            "index": i,
            "name": labels[i],
            "outside_q01_q99": (below + n - upto) / n,
            "outside_unit_after_norm": (unit_below + n - unit_upto) / n,
            "max_abs_normalized": max(abs(d.min - offset), abs(d.max - offset)) / scale,
            "exact": bool(exact_lo and exact_hi and exact_a and exact_b),
        })  # fmt: skip
    return out


def _dumps(stats) -> str:
    return json.dumps(stats.to_json_dict(), indent=2)


# -- command line ------------------------------------------------------------------------------------


def _parse_episodes(text: str) -> list[int]:
    """``"0,3,5-9"`` -> [0, 3, 5, 6, 7, 8, 9]."""
    out: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            if "-" in part:
                first, last = (int(x) for x in part.split("-", 1))
                out += range(first, last + 1)
            else:
                out.append(int(part))
        except ValueError:
            raise argparse.ArgumentTypeError(f"--episodes: cannot read {part!r} (use e.g. 0,3,5-9)") from None
    return out


def format_report(stats) -> str:
    """A plain-text table of the statistics and the report, one line per dim."""
    meta = stats.metadata
    lines = [
        f"{meta['config_type']}: {meta['num_episodes']} episodes, {meta['frames']} frames, horizon "
        f"{meta['horizon']}, method {meta['method']}, {meta['passes']} pass(es), {meta['seconds']} s",
        f"{'dim':<34} {'mean':>10} {'std':>10} {'q01':>10} {'q99':>10} {'out q01-99':>10} {'out [-1,1]':>10}",
    ]
    floored = {(f["block"], f["index"]) for f in meta["guards"]["floored"]}
    for block in ("state", "actions"):
        s = getattr(stats, block)
        for row in meta["report"][block]:
            i = row["index"]
            flag = "  FLOORED" if (block, i) in floored else ""
            approx = "" if row["exact"] else "~"
            lines.append(
                f"{block + ' ' + row['name']:<34.34} {s.mean[i]:>10.4g} {s.std[i]:>10.4g} {s.q01[i]:>10.4g} "
                f"{s.q99[i]:>10.4g} {row['outside_q01_q99']:>10.4f} {approx}{row['outside_unit_after_norm']:>9.4f}"
                f"{flag}"
            )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m steps.stats.norm_stats", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--config_type", required=True, help="built-in config type name or a .yaml file")
    parser.add_argument("--dataset", help="local dataset folder or Hub id (default: the config type's)")
    parser.add_argument("--revision", help="Hub revision (default: the config type's, else the latest)")
    parser.add_argument("--episodes", type=_parse_episodes, help="training episodes, e.g. 0-99 (default: "
                        "the train split of steps.fetch.dataset with --val_fraction and --seed)")  # fmt: skip
    parser.add_argument("--val_fraction", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="norm_stats.json", help="output file (default: ./norm_stats.json)")
    parser.add_argument("--cache_dir", help="cache folder (default: $VLA_SFT_CACHE/norm_stats)")
    parser.add_argument("--no_cache", action="store_true", help="recompute even if a cached result exists")
    parser.add_argument("--method", choices=("exact", "histogram"), default="exact")
    parser.add_argument("--memory_budget_mb", type=float, default=1024)
    parser.add_argument("--min_scale", type=float, default=DEFAULT_MIN_SCALE)
    parser.add_argument("--max_abs_normalized", type=float, default=DEFAULT_MAX_ABS_NORMALIZED)
    parser.add_argument("--workers", type=int, default=1, help="threads over the dims")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s", stream=sys.stderr)

    from steps.fetch.dataset import fetch_dataset

    try:
        fetched = fetch_dataset(args.config_type, dataset=args.dataset, revision=args.revision,
                                val_fraction=args.val_fraction, seed=args.seed)  # fmt: skip
        episodes = args.episodes if args.episodes is not None else fetched.train_episodes
        stats = compute_norm_stats(
            args.config_type, fetched.path, episodes, out_path=args.out, cache_dir=args.cache_dir,
            use_cache=not args.no_cache, method=args.method, memory_budget_mb=args.memory_budget_mb,
            min_scale=args.min_scale, max_abs_normalized=args.max_abs_normalized, workers=args.workers,
        )  # fmt: skip
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(format_report(stats), file=sys.stderr)
    print(Path(args.out).resolve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
