"""Per-feature statistics as LeRobot stores them in ``meta/stats.json`` (and v2.1's per-episode stats).

Numeric features: exact min/max/mean/std/count and quantiles per dim. Cameras: per-channel statistics of
pixels in [0, 1], shaped ``[3, 1, 1]`` like LeRobot's; the dataset-level quantiles of cameras are
frame-weighted averages of the episodes' quantiles (LeRobot's approximation).
"""

from __future__ import annotations

import numpy as np

QUANTILES = {"q01": 0.01, "q10": 0.10, "q50": 0.50, "q90": 0.90, "q99": 0.99}


def feature_stats(values: np.ndarray) -> dict[str, np.ndarray]:
    """min/max/mean/std/count and exact quantiles per dim of ``[N, d]`` values."""
    x = values.astype(np.float64)
    with np.errstate(invalid="ignore"):  # NaN in the data gives NaN stats; the reader reports the NaN itself
        out = {
            "min": x.min(axis=0),
            "max": x.max(axis=0),
            "mean": x.mean(axis=0),
            "std": x.std(axis=0),
            "count": np.array([len(x)], dtype=np.int64),
        }
        out.update({name: np.quantile(x, q, axis=0) for name, q in QUANTILES.items()})
    return out


def pixel_stats(pixels: np.ndarray) -> dict[str, np.ndarray]:
    """Per-channel stats of ``[N, 3]`` uint8 pixels, scaled to [0, 1], shaped ``[3, 1, 1]`` as LeRobot's."""
    stats = feature_stats(pixels / 255.0)
    return {k: v if k == "count" else v.reshape(3, 1, 1) for k, v in stats.items()}


def merge_pixel_stats(per_episode: list[dict]) -> dict[str, np.ndarray]:
    counts = np.array([s["count"][0] for s in per_episode], dtype=np.float64)
    weights = counts / counts.sum()
    mean = sum(w * s["mean"] for w, s in zip(weights, per_episode))
    second = sum(w * (s["std"] ** 2 + s["mean"] ** 2) for w, s in zip(weights, per_episode))
    out = {
        "min": np.min([s["min"] for s in per_episode], axis=0),
        "max": np.max([s["max"] for s in per_episode], axis=0),
        "mean": mean,
        "std": np.sqrt(np.maximum(second - mean**2, 0.0)),
        "count": np.array([int(counts.sum())], dtype=np.int64),
    }
    out.update({name: sum(w * s[name] for w, s in zip(weights, per_episode)) for name in QUANTILES})
    return out


def stats_to_json(stats: dict) -> dict:
    return {
        key: {name: np.asarray(v).tolist() for name, v in values.items()} for key, values in stats.items()
    }
