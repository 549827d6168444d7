"""Normalization statistics (openpi's norm_stats.json layout) and normalize / unnormalize.

z-score:  (x - mean) / (std + 1e-6)
quantile: (x - q01) / (q99 - q01 + 1e-6) * 2 - 1      (maps the q01..q99 band to [-1, 1])
No clipping. Statistics are at the robot's native dims; when the input has more dims (padded to
32) the extra dims pass through unchanged. Works on numpy arrays and torch tensors alike.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

EPS = 1e-6
MODES = ("zscore", "quantile")
REQUIRED_STATS = ("mean", "std", "q01", "q99")
OPTIONAL_STATS = ("min", "max", "q10", "q50", "q90")


@dataclass(frozen=True)
class Stats:
    """Per-dim statistics of one vector (state or actions) at native dims, float32."""

    mean: np.ndarray
    std: np.ndarray
    q01: np.ndarray
    q99: np.ndarray
    min: np.ndarray | None = None
    max: np.ndarray | None = None
    q10: np.ndarray | None = None
    q50: np.ndarray | None = None
    q90: np.ndarray | None = None
    # Number of values each dim was computed from.
    count: int | None = None

    def __post_init__(self) -> None:
        dims = None
        for name in REQUIRED_STATS + OPTIONAL_STATS:
            value = getattr(self, name)
            if value is None:
                continue
            array = np.asarray(value, dtype=np.float32)
            if array.ndim != 1 or (dims is not None and array.shape[0] != dims):
                raise ValueError(
                    f"Stats.{name} must be a 1-D array of {dims or 'n'} values, got shape {array.shape}"
                )
            if not np.all(np.isfinite(array)):
                raise ValueError(f"Stats.{name} has non-finite values: {array.tolist()}")
            dims = array.shape[0]
            object.__setattr__(self, name, array)

    @property
    def dim(self) -> int:
        return int(self.mean.shape[0])

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None:
                out[f.name] = value.tolist() if isinstance(value, np.ndarray) else int(value)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, where: str) -> Stats:
        """Build from a JSON dict; `where` (file and block) goes into error messages."""
        if not isinstance(data, Mapping):
            raise ValueError(f"{where}: expected a mapping of statistics, got {type(data).__name__}")
        missing = [k for k in REQUIRED_STATS if k not in data]
        if missing:
            raise ValueError(f"{where}: missing key(s) {missing}; has {sorted(data)}")
        known = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in known}
        try:
            return cls(**kwargs)
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from None


@dataclass(frozen=True)
class NormStats:
    """State and action statistics plus provenance metadata (dataset, fingerprint, episodes, ...)."""

    state: Stats
    actions: Stats
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_json_dict(self) -> dict[str, Any]:
        return {
            "norm_stats": {"state": self.state.to_dict(), "actions": self.actions.to_dict()},
            "metadata": self.metadata,
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write openpi's layout (+ a "metadata" block) atomically."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(self.to_json_dict(), indent=2))
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> NormStats:
        """Read a norm_stats.json (ours or openpi's; metadata optional).

        Raises:
            ValueError: missing file, invalid JSON, or a missing block / statistic (named in the message).
        """
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"norm stats file {str(path)!r} does not exist")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not valid JSON: {err}") from None
        if not isinstance(data, dict) or "norm_stats" not in data:
            raise ValueError(f"{path}: missing key 'norm_stats' (expected openpi's layout)")
        blocks = data["norm_stats"]
        for name in ("state", "actions"):
            if name not in blocks:
                raise ValueError(f"{path}: missing key 'norm_stats.{name}'; has {sorted(blocks)}")
        return cls(
            state=Stats.from_dict(blocks["state"], where=f"{path}: norm_stats.state"),
            actions=Stats.from_dict(blocks["actions"], where=f"{path}: norm_stats.actions"),
            metadata=dict(data.get("metadata") or {}),
        )


def _split(x: Any, stats: Stats, mode: str) -> int:
    if mode not in MODES:
        raise ValueError(f"normalization mode must be one of {MODES}, got {mode!r}")
    dims = stats.dim
    if x.shape[-1] < dims:
        raise ValueError(f"input has {x.shape[-1]} dims but the statistics have {dims}")
    return dims


def _params(x: Any, stats: Stats, mode: str) -> tuple[Any, Any]:
    """(offset, scale) as arrays/tensors matching x: zscore (mean, std + eps), quantile (q01, q99 - q01 + eps)."""
    if mode == "zscore":
        offset, scale = stats.mean, stats.std + np.float32(EPS)
    else:
        offset, scale = stats.q01, stats.q99 - stats.q01 + np.float32(EPS)
    if isinstance(x, np.ndarray):
        dtype = x.dtype if np.issubdtype(x.dtype, np.floating) else np.float32
        return offset.astype(dtype), scale.astype(dtype)
    import torch

    dtype = x.dtype if x.is_floating_point() else torch.float32
    return (
        torch.as_tensor(offset, dtype=dtype, device=x.device),
        torch.as_tensor(scale, dtype=dtype, device=x.device),
    )


def _join(x: Any, head: Any, dims: int) -> Any:
    if x.shape[-1] == dims:
        return head
    if isinstance(x, np.ndarray):
        return np.concatenate([head, x[..., dims:].astype(head.dtype)], axis=-1)
    import torch

    return torch.cat([head, x[..., dims:].to(head.dtype)], dim=-1)


def normalize(x: Any, stats: Stats, mode: str) -> Any:
    """Normalize the first `stats.dim` dims of x (numpy or torch); later dims pass through."""
    dims = _split(x, stats, mode)
    offset, scale = _params(x, stats, mode)
    head = (x[..., :dims] - offset) / scale
    if mode == "quantile":
        head = head * 2.0 - 1.0
    return _join(x, head, dims)


def unnormalize(x: Any, stats: Stats, mode: str) -> Any:
    """Inverse of `normalize` (numpy or torch); dims past `stats.dim` pass through."""
    dims = _split(x, stats, mode)
    offset, scale = _params(x, stats, mode)
    head = x[..., :dims]
    if mode == "quantile":
        head = (head + 1.0) / 2.0
    return _join(x, head * scale + offset, dims)
