"""Normalization statistics file layout and normalize / unnormalize."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from data_adapters.normalization import NormStats, Stats, normalize, unnormalize


def _stats(dim: int, seed: int = 0) -> Stats:
    rng = np.random.default_rng(seed)
    values = rng.normal(rng.uniform(-3, 3, dim), rng.uniform(0.1, 4, dim), size=(500, dim))
    return Stats(
        mean=values.mean(0),
        std=values.std(0),
        q01=np.quantile(values, 0.01, axis=0),
        q99=np.quantile(values, 0.99, axis=0),
        min=values.min(0),
        max=values.max(0),
        count=500,
    )


def test_formulas_match_design():
    stats = Stats(mean=[1.0, -2.0], std=[2.0, 0.5], q01=[0.0, -1.0], q99=[4.0, 1.0])
    x = np.array([[3.0, -1.0]], dtype=np.float32)
    np.testing.assert_allclose(
        normalize(x, stats, "zscore"), [[2.0 / (2 + 1e-6), 1.0 / (0.5 + 1e-6)]], rtol=1e-6
    )
    np.testing.assert_allclose(
        normalize(x, stats, "quantile"), [[3.0 / (4 + 1e-6) * 2 - 1, 0.0 / (2 + 1e-6) * 2 - 1]], rtol=1e-6
    )
    # No clipping: values outside q01..q99 leave [-1, 1].
    assert normalize(np.array([100.0, 100.0]), stats, "quantile").min() > 1.0


@pytest.mark.parametrize("mode", ["zscore", "quantile"])
def test_round_trip_numpy_and_torch_with_padded_dims(mode):
    stats = _stats(7)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(4, 10, 32)).astype(np.float32) * 3
    y = normalize(x, stats, mode)
    assert y.dtype == np.float32 and y.shape == x.shape
    np.testing.assert_array_equal(y[..., 7:], x[..., 7:])  # padded dims pass through
    assert not np.allclose(y[..., :7], x[..., :7])
    np.testing.assert_allclose(unnormalize(y, stats, mode), x, atol=1e-5)
    xt = torch.from_numpy(x).double()
    yt = normalize(xt, stats, mode)
    assert yt.dtype == torch.float64
    np.testing.assert_allclose(yt.numpy(), y, atol=1e-5)
    np.testing.assert_allclose(unnormalize(yt, stats, mode).numpy(), x, atol=1e-9)


def test_input_with_fewer_dims_or_unknown_mode():
    with pytest.raises(ValueError, match=r"input has 3 dims but the statistics have 7"):
        normalize(np.zeros(3), _stats(7), "zscore")
    with pytest.raises(ValueError, match=r"mode must be one of \('zscore', 'quantile'\), got 'minmax'"):
        unnormalize(np.zeros(7), _stats(7), "minmax")


def test_save_load_openpi_layout_with_metadata(tmp_path):
    stats = NormStats(
        state=_stats(8), actions=_stats(7, seed=1), metadata={"dataset": "x/y", "episodes": [0, 2]}
    )
    path = stats.save(tmp_path / "assets" / "norm_stats.json")
    data = json.loads(path.read_text())
    assert set(data) == {"norm_stats", "metadata"}
    assert set(data["norm_stats"]) == {"state", "actions"}
    assert {"mean", "std", "q01", "q99"} <= set(data["norm_stats"]["state"])
    loaded = NormStats.load(path)
    assert loaded.metadata == {"dataset": "x/y", "episodes": [0, 2]}
    assert loaded.actions.count == 500
    for name in ("mean", "std", "q01", "q99", "min", "max"):
        np.testing.assert_array_equal(getattr(loaded.state, name), getattr(stats.state, name))
    assert loaded.state.q50 is None and loaded.state.mean.dtype == np.float32


def test_load_plain_openpi_file(tmp_path):
    block = {"mean": [0.0, 1.0], "std": [1.0, 1.0], "q01": [-1.0, 0.0], "q99": [1.0, 2.0]}
    path = tmp_path / "norm_stats.json"
    path.write_text(json.dumps({"norm_stats": {"state": block, "actions": block}}))
    loaded = NormStats.load(path)
    assert loaded.metadata == {} and loaded.state.dim == 2


def test_load_errors_name_file_and_key(tmp_path):
    path = tmp_path / "norm_stats.json"
    block = {"mean": [0.0], "std": [1.0], "q01": [-1.0], "q99": [1.0]}
    path.write_text(
        json.dumps({"norm_stats": {"state": block, "actions": {k: block[k] for k in ("mean", "std", "q01")}}})
    )
    with pytest.raises(ValueError, match=rf"{path}: norm_stats.actions: missing key\(s\) \['q99'\]"):
        NormStats.load(path)
    path.write_text(json.dumps({"norm_stats": {"state": block}}))
    with pytest.raises(ValueError, match=rf"{path}: missing key 'norm_stats.actions'"):
        NormStats.load(path)
    path.write_text(json.dumps({"stats": {}}))
    with pytest.raises(ValueError, match=rf"{path}: missing key 'norm_stats'"):
        NormStats.load(path)
    path.write_text(json.dumps({"norm_stats": {"state": block, "actions": {**block, "std": [1.0, 2.0]}}}))
    with pytest.raises(
        ValueError, match=rf"{path}: norm_stats.actions: Stats.std must be a 1-D array of 1 values"
    ):
        NormStats.load(path)
    with pytest.raises(ValueError, match=r"does not exist"):
        NormStats.load(tmp_path / "missing.json")


def test_stats_reject_non_finite():
    with pytest.raises(ValueError, match=r"Stats.q99 has non-finite values"):
        Stats(mean=[0.0], std=[1.0], q01=[0.0], q99=[float("nan")])
