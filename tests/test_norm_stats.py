"""Normalization statistics: exact vs brute-force numpy, streaming, histogram bound, guards, cache, CLI."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from data_adapters.lerobot_writer import LeRobotWriter
from data_adapters.normalization import NormStats, normalize, unnormalize
from data_adapters.registry import get_config_type
from data_adapters.synthetic import make_synthetic_dataset
from steps.stats.chunk_stats import (
    QUANTILES,
    Episode,
    chunk_multiplicity,
    compute_chunk_stats,
    numpy_linear_quantile,
)
from steps.stats.norm_stats import compute_norm_stats, dim_labels

REPO = Path(__file__).resolve().parents[1]
QS = list(QUANTILES.values())


# -- brute force: expand every chunk, as the loader does ----------------------------------------------


def expand(episodes, horizon, delta_mask):
    """All state values [N, Ds] and all chunk action values [N*H, Da], by explicit expansion."""
    mask = np.asarray(delta_mask, dtype=bool)
    states, chunks = [], []
    for ep in episodes:
        t = len(ep.state)
        rows = np.minimum(np.arange(t)[:, None] + np.arange(horizon), t - 1)
        chunk = ep.actions[rows].copy()  # [T, H, Da]
        chunk[:, :, mask] -= ep.state[:, None, : len(mask)][:, :, mask]
        states.append(ep.state)
        chunks.append(chunk.reshape(-1, chunk.shape[-1]))
    return np.concatenate(states), np.concatenate(chunks)


def random_episodes(rng, lengths, state_dim, action_dim, *, ties=True, float32=True):
    """Heterogeneous episodes (own offset and scale each), some tied values; float32-representable
    (as LeRobot data) unless ``float32=False``, which takes the engine's float64 path."""
    out = []
    for i, t in enumerate(lengths):
        scale = 10.0 ** rng.uniform(-2, 1)
        state = rng.uniform(-3, 3, state_dim) + scale * np.cumsum(rng.normal(size=(t, state_dim)), axis=0)
        actions = state[:, np.arange(action_dim) % state_dim] + 0.1 * scale * rng.normal(size=(t, action_dim))
        if ties:
            actions[:, -1] = np.sign(actions[:, -1])  # a gripper: only -1 / +1
        if float32:
            state, actions = (
                state.astype(np.float32).astype(np.float64),
                actions.astype(np.float32).astype(np.float64),
            )
        out.append(Episode(i, state, actions))
    return out


def check_against_brute(result, episodes, horizon, delta_mask, *, exact=True):
    state, actions = expand(episodes, horizon, delta_mask)
    for name, values, dims in (("state", state, result.state), ("actions", actions, result.actions)):
        for i, d in enumerate(dims):
            x = values[:, i]
            expected = np.quantile(x, QS)
            got = np.array([d.quantiles[k] for k in QUANTILES])
            bound = np.array([d.error_bound[k] for k in QUANTILES])
            if exact:
                np.testing.assert_array_equal(got, expected, err_msg=f"{name}[{i}] quantiles")
                assert not bound.any()
            else:
                assert np.all(np.abs(got - expected) <= bound * (1 + 1e-9) + 1e-12), f"{name}[{i}]"
            assert d.count == x.size and d.min == x.min() and d.max == x.max()
            np.testing.assert_allclose(d.mean, x.mean(), rtol=1e-12, atol=1e-12, err_msg=f"{name}[{i}] mean")
            np.testing.assert_allclose(d.std, x.std(), rtol=1e-10, atol=1e-13, err_msg=f"{name}[{i}] std")
            for threshold in (*expected, x.mean() + x.std()):
                below, is_exact = d.count_below(threshold)
                if is_exact:
                    assert below == np.count_nonzero(x < threshold)
                upto, is_exact = d.count_at_most(threshold)
                if is_exact:
                    assert upto == np.count_nonzero(x <= threshold)


# -- the engine ----------------------------------------------------------------------------------------


def test_chunk_multiplicity_counts_every_chunk_timestep():
    lengths, horizon = [1, 2, 5, 7, 60], 7
    counted = np.concatenate([np.bincount(np.minimum(np.arange(t)[:, None] + np.arange(horizon), t - 1).ravel(),
                                          minlength=t) for t in lengths])  # fmt: skip
    np.testing.assert_array_equal(chunk_multiplicity(lengths, horizon), counted)


@pytest.mark.parametrize("n", [1, 2, 3, 10, 101, 1000])
def test_numpy_linear_quantile_is_numpy_bit_for_bit(n):
    x = np.random.default_rng(n).normal(size=n) * 1e3
    s = np.sort(x)
    for q in [*QS, 0.0, 1.0, 0.333]:
        assert numpy_linear_quantile(lambda r: s[r], n, q) == np.quantile(x, q)


ENGINE_CASES = {
    # name: (lengths, horizon, state_dim, delta_mask)
    "libero_like": ([1, 3, 49, 50, 51, 120, 7], 50, 8, (True,) * 6 + (False,)),
    "metaworld_like": ([40, 12, 77, 5], 5, 4, (False,) * 4),
    "all_delta": ([2, 30, 31], 10, 3, (True, True, True)),
    "horizon_1": ([4, 9], 1, 2, (True, False)),
}


@pytest.mark.parametrize("case", ENGINE_CASES)
@pytest.mark.parametrize("memory_budget", [1 << 30, 1])  # in memory / streamed with tiny brackets
@pytest.mark.parametrize("float32", [True, False])
def test_exact_mode_matches_numpy(case, memory_budget, float32):
    lengths, horizon, state_dim, delta = ENGINE_CASES[case]
    rng = np.random.default_rng(len(lengths))
    episodes = random_episodes(rng, lengths, state_dim, len(delta), float32=float32)
    result = compute_chunk_stats(
        lambda: iter(episodes), lengths, state_dim=state_dim, action_dim=len(delta), horizon=horizon,
        delta_mask=delta, memory_budget_bytes=memory_budget, sample_size=200, block_values=500,
    )  # fmt: skip
    if memory_budget == 1:
        assert result.passes >= 2  # really streamed
    check_against_brute(result, episodes, horizon, delta)


@pytest.mark.parametrize("sample_size", [0, 5, 10_000])
def test_streaming_recovers_from_missed_brackets(sample_size):
    # No sample (or a useless one) and a tiny cap: every rank must be found by narrowing passes.
    lengths, horizon, delta = [300, 17, 250], 20, (True, False)
    episodes = random_episodes(np.random.default_rng(7), lengths, 2, 2)
    result = compute_chunk_stats(
        lambda: iter(episodes), lengths, state_dim=2, action_dim=2, horizon=horizon, delta_mask=delta,
        memory_budget_bytes=1, sample_size=sample_size, block_values=1000, hist_bins=32,
    )  # fmt: skip
    check_against_brute(result, episodes, horizon, delta)


def test_threads_give_the_same_result():
    lengths, horizon, delta = [90, 3, 140, 60], 12, (True, True, False)
    episodes = random_episodes(np.random.default_rng(9), lengths, 3, 3)
    kw = dict(state_dim=3, action_dim=3, horizon=horizon, delta_mask=delta, memory_budget_bytes=1,
              sample_size=300, block_values=900)  # fmt: skip
    one = compute_chunk_stats(lambda: iter(episodes), lengths, **kw)
    two = compute_chunk_stats(lambda: iter(episodes), lengths, workers=2, **kw)
    for a, b in zip(one.state + one.actions, two.state + two.actions):
        assert (a.quantiles, a.mean, a.std, a.min, a.max) == (b.quantiles, b.mean, b.std, b.min, b.max)
    check_against_brute(two, episodes, horizon, delta)


def test_histogram_mode_is_within_its_stated_bound():
    lengths, horizon, delta = [80, 33, 150, 2], 10, (True, True, False)
    episodes = random_episodes(np.random.default_rng(3), lengths, 4, 3)
    result = compute_chunk_stats(
        lambda: iter(episodes), lengths, state_dim=4, action_dim=3, horizon=horizon, delta_mask=delta,
        method="histogram", hist_bins=256, block_values=700,
    )  # fmt: skip
    assert result.method == "histogram" and result.passes == 2
    check_against_brute(result, episodes, horizon, delta, exact=False)
    bounds = [d.error_bound["q50"] for d in result.actions]
    assert all(0 < b <= (d.max - d.min) / 256 * 1.000001 for b, d in zip(bounds, result.actions))


def test_engine_rejects_nan_naming_episode_and_frame():
    episodes = random_episodes(np.random.default_rng(0), [5, 6], 3, 3)
    episodes[1].actions[4, 2] = np.nan
    with pytest.raises(ValueError, match=r"actions\[2\] at episode 1, frame 4"):
        compute_chunk_stats(lambda: iter(episodes), [5, 6], state_dim=3, action_dim=3, horizon=2,
                            delta_mask=(False,) * 3)  # fmt: skip


# -- the step on LeRobot datasets ----------------------------------------------------------------------


def write_dataset(root, cfg, episodes, *, version="v3.0", names=None, cameras=True):
    """A LeRobot dataset in cfg's schema (single state / action key) holding the given numbers."""
    features = {cfg.state_keys[0]: {"dtype": "float32", "shape": (cfg.state_dim,), "names": names},
                cfg.action_keys[0]: {"dtype": "float32", "shape": (cfg.action_dim,), "names": None}}  # fmt: skip
    cameras = cfg.camera_keys if cameras else ()
    features.update({k: {"dtype": "image", "shape": (4, 4, 3), "names": ["height", "width", "channels"]}
                     for k in cameras})  # fmt: skip
    with LeRobotWriter(root, fps=10, features=features, version=version) as writer:
        for ep in episodes:
            for t in range(len(ep.state)):
                frame = {cfg.state_keys[0]: ep.state[t], cfg.action_keys[0]: ep.actions[t]}
                frame.update({k: np.zeros((4, 4, 3), np.uint8) for k in cameras})
                writer.add_frame(frame, task="do it")
            writer.save_episode()
    return Path(root)


def loader_values(root, cfg, episodes):
    """Brute force through the training loader itself: every item's state and delta'd action chunk."""
    from data_adapters.lerobot_reader import LeRobotFrames

    frames = LeRobotFrames(root, state_keys=cfg.state_keys, action_keys=cfg.action_keys, camera_keys=[],
                           horizon=cfg.action_horizon, episodes=episodes)  # fmt: skip
    mask = np.asarray(cfg.delta_mask)
    states, chunks = [], []
    for i in range(len(frames)):
        item = frames[i]
        state, actions = item["state"].astype(np.float64), item["actions"].astype(np.float64)
        actions[:, mask] -= state[: len(mask)][mask]
        states.append(state)
        chunks.append(actions)
    return np.stack(states), np.concatenate(chunks)


@pytest.mark.parametrize(
    "name,version",
    [("pi0_libero", "v3.0"), ("pi05_libero", "v2.1"), ("pi05_metaworld", "v3.0"), ("pi05_calvin", "v2.0")],
)
def test_step_matches_the_training_loader(tmp_path, name, version):
    cfg = get_config_type(name)
    root = make_synthetic_dataset(tmp_path / "ds", cfg, num_episodes=5, min_len=3, max_len=70, image_size=8,
                                  version=version, seed=1)  # fmt: skip
    train = [0, 2, 3, 4]
    stats = compute_norm_stats(cfg, root, train, out_path=tmp_path / "ns.json", cache_dir=tmp_path / "cache")
    state, actions = loader_values(root, cfg, train)
    for block, values in (("state", state), ("actions", actions)):
        s = getattr(stats, block)
        assert s.count == len(values)
        for key in ("q01", "q10", "q50", "q90", "q99"):
            np.testing.assert_array_equal(
                getattr(s, key), np.quantile(values, QUANTILES[key], axis=0).astype(np.float32)
            )
        np.testing.assert_allclose(s.mean, values.mean(0), rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(s.std, values.std(0), rtol=1e-6, atol=1e-7)
        np.testing.assert_array_equal(s.min, values.min(0).astype(np.float32))
    meta = stats.metadata
    assert meta["episodes"] == train and meta["horizon"] == cfg.action_horizon
    assert meta["delta_mask"] == list(cfg.delta_mask) and meta["config_type"] == name
    assert meta["counts"] == {"state": len(state), "actions": len(actions)}
    assert meta["method"] == "exact" and meta["error_bound"]["actions"]["q99"] == [0.0] * cfg.action_dim
    on_disk = json.loads((tmp_path / "ns.json").read_text())
    assert set(on_disk) == {"norm_stats", "metadata"}
    assert (
        {"mean", "std", "q01", "q99"}
        <= set(on_disk["norm_stats"]["state"])
        <= set(["mean", "std", "q01", "q99", "min", "max", "q10", "q50", "q90", "count"])
    )
    assert NormStats.load(tmp_path / "ns.json").actions.q99.tolist() == stats.actions.q99.tolist()


@pytest.fixture(scope="module")
def libero_like(tmp_path_factory):
    """LIBERO-shaped dataset (8-d state, 7-d actions) with heterogeneous episodes and a gripper at +-1."""
    cfg = get_config_type("pi0_libero")
    rng = np.random.default_rng(5)
    episodes = random_episodes(rng, [3, 60, 49, 120, 12, 88], 8, 7)
    root = write_dataset(tmp_path_factory.mktemp("libero") / "ds", cfg, episodes,
                         names=["x", "y", "z", "rx", "ry", "rz", "g0", "g1"])  # fmt: skip
    return cfg, root, episodes


def test_streaming_and_in_memory_agree_on_a_dataset(libero_like, tmp_path):
    cfg, root, episodes = libero_like
    kw = dict(out_path=None, use_cache=False, cache_dir=tmp_path)
    small = compute_norm_stats(cfg, root, None, memory_budget_mb=1e-4, **kw)
    large = compute_norm_stats(cfg, root, None, **kw)
    assert small.metadata["passes"] >= 2 and large.metadata["passes"] == 1
    for block in ("state", "actions"):
        a, b = getattr(small, block).to_dict(), getattr(large, block).to_dict()
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_allclose(a[key], b[key], rtol=1e-6, err_msg=f"{block}.{key}")
            if key.startswith("q") or key in ("min", "max"):
                assert a[key] == b[key]
    state, actions = expand(episodes, cfg.action_horizon, cfg.delta_mask)
    report = large.metadata["report"]["actions"]
    for i, row in enumerate(report):
        x = actions[:, i]
        q01, q99 = np.quantile(x, [0.01, 0.99])
        assert row["exact"] and row["outside_q01_q99"] == np.count_nonzero((x < q01) | (x > q99)) / x.size
        z = normalize(x[:, None].astype(np.float32), _one_dim(large.actions, i), "zscore")
        assert abs(row["outside_unit_after_norm"] - np.mean(np.abs(z) > 1)) < 2 / x.size
        assert row["max_abs_normalized"] == pytest.approx(np.abs(z).max(), rel=1e-4)
    assert report[0]["name"] == "actions[0]"
    assert large.metadata["report"]["state"][3]["name"] == "state[3] rx"


def test_progress_lines_per_pass_only_when_asked_or_slow(libero_like, tmp_path, capsys):
    cfg, root, _ = libero_like
    kw = dict(out_path=None, use_cache=False, cache_dir=tmp_path, memory_budget_mb=1e-4)
    stats = compute_norm_stats(cfg, root, None, progress_every_s=0, **kw)  # a line after every data file
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("norm stats pass ")]
    total = sum([3, 60, 49, 120, 12, 88])
    for n in range(1, stats.metadata["passes"] + 1):
        mine = [line for line in lines if line.startswith(f"norm stats pass {n}: ")]
        assert mine and mine[-1].startswith(f"norm stats pass {n}: {total}/{total} frames (100%)"), lines
    compute_norm_stats(cfg, root, None, **kw)  # default interval (10 s): a small dataset prints nothing
    assert "norm stats pass" not in capsys.readouterr().out


def _one_dim(stats, i):
    return type(stats)(**{k: v[i : i + 1] for k, v in stats.__dict__.items() if isinstance(v, np.ndarray)})


def test_histogram_method_states_its_bound(libero_like, tmp_path):
    cfg, root, episodes = libero_like
    stats = compute_norm_stats(cfg, root, None, method="histogram", hist_bins=64, cache_dir=tmp_path)
    _, actions = expand(episodes, cfg.action_horizon, cfg.delta_mask)
    bound = np.array(stats.metadata["error_bound"]["actions"]["q01"])
    assert stats.metadata["method"] == "histogram" and (bound > 0).all()
    error = np.abs(stats.actions.q01 - np.quantile(actions, 0.01, axis=0))
    assert (error <= bound * 1.0001 + 1e-6).all()


@pytest.mark.parametrize("mode", ["zscore", "quantile"])
def test_nearly_constant_dim_is_floored_and_bounded(tmp_path, mode, caplog):
    name = "pi0_libero" if mode == "zscore" else "pi05_libero"
    cfg = get_config_type(name)
    rng = np.random.default_rng(11)
    episodes = random_episodes(rng, [40, 55, 30], 8, 7, ties=False)
    for ep in episodes:  # state dim 2 constant; action dim 6 constant but for one rare outlier
        ep.state[:, 2] = 0.25
        ep.actions[:, 6] = 1.0
    episodes[1].actions[7, 6] = 3.0
    root = write_dataset(tmp_path / "ds", cfg, episodes)
    with caplog.at_level(logging.WARNING, logger="steps.stats.norm_stats"):
        stats = compute_norm_stats(cfg, root, None, cache_dir=tmp_path / "cache", min_scale=1e-3,
                                   max_abs_normalized=5.0)  # fmt: skip
    floored = {(f["block"], f["index"]): f for f in stats.metadata["guards"]["floored"]}
    assert set(floored) == {("state", 2), ("actions", 6)}
    assert floored[("actions", 6)]["name"] == "actions[6]"
    assert floored[("actions", 6)]["raw"]["q01"] == floored[("actions", 6)]["raw"]["q99"] == 1.0
    assert "nearly constant actions dim 6" in caplog.text and "nearly constant state dim 2" in caplog.text
    state, actions = expand(episodes, cfg.action_horizon, cfg.delta_mask)
    for block, values in (("state", state), ("actions", actions)):
        z = normalize(values.astype(np.float32), getattr(stats, block), mode)
        assert np.abs(z).max() <= 5.0 + 1e-4, f"{block}: normalized values beyond the documented limit"
        back = unnormalize(z, getattr(stats, block), mode)
        np.testing.assert_allclose(back, values, rtol=1e-5, atol=1e-5)
    # Without the guard the outlier would normalize to about 2e6 (openpi#814).
    raw = floored[("actions", 6)]["raw"]
    assert (3.0 - raw["q01"]) / (raw["q99"] - raw["q01"] + 1e-6) * 2 - 1 > 1e6


def test_cache_is_keyed_by_content_and_names_the_folder_it_was_asked_for(libero_like, tmp_path, caplog):
    cfg, root, _ = libero_like
    import logging
    import shutil

    copy = Path(shutil.copytree(root, tmp_path / "ds"))
    cache = tmp_path / "cache"
    first = compute_norm_stats(cfg, copy, [0, 1, 2], cache_dir=cache)
    with caplog.at_level(logging.INFO, logger="steps.stats.norm_stats"):
        started = time.perf_counter()
        again = compute_norm_stats(cfg, copy, [0, 1, 2], cache_dir=cache, out_path=tmp_path / "o.json")
    assert time.perf_counter() - started < 2.0 and "norm stats: cache hit" in caplog.text
    assert again.metadata == first.metadata and again.actions.q99.tolist() == first.actions.q99.tolist()
    assert json.loads((tmp_path / "o.json").read_text())["metadata"] == first.metadata
    # Another copy of the same data: recomputed (other files), the same content key and numbers, and the
    # metadata names the folder it was computed for.
    other = Path(shutil.copytree(root, tmp_path / "other"))
    third = compute_norm_stats(cfg, other, [0, 1, 2], cache_dir=cache)
    assert third.metadata["cache_key"] == first.metadata["cache_key"]
    assert third.metadata["dataset"]["root"] == str(other.resolve())
    assert third.actions.q99.tolist() == first.actions.q99.tolist()
    # Same-size garbage in the data file: never served from the cache.
    data = next(copy.glob("data/**/*.parquet"))
    data.write_bytes(b"\0" * data.stat().st_size)
    with pytest.raises(ValueError, match="corrupt parquet file"):
        compute_norm_stats(cfg, copy, [0, 1, 2], cache_dir=cache)
    # Anything statistics-relevant changes the key, so it recomputes.
    for changed in (dict(episodes=[0, 1]), dict(cfg=dataclasses.replace(cfg, action_horizon=10)),
                    dict(cfg=dataclasses.replace(cfg, delta_mask=(False,) * 7))):  # fmt: skip
        args = {"cfg": cfg, "episodes": [0, 1, 2], **changed}
        assert (
            compute_norm_stats(args["cfg"], other, args["episodes"], cache_dir=cache).metadata["cache_key"]
            != (first.metadata["cache_key"])
        )
    assert not list(cache.rglob(".*tmp*"))  # no half-written cache files


@pytest.mark.filterwarnings("ignore:invalid value encountered")  # the writer's own stats of the inf
def test_nan_in_the_data_names_episode_and_frame(tmp_path):
    cfg = get_config_type("pi05_metaworld")
    episodes = random_episodes(np.random.default_rng(2), [6, 9, 4], 4, 4)
    episodes[1].state[5, 3] = np.inf
    root = write_dataset(tmp_path / "ds", cfg, episodes)
    with pytest.raises(ValueError, match=r"'observation.state'\[3\] at episode 1, frame 5"):
        compute_norm_stats(cfg, root, None, cache_dir=tmp_path / "cache")
    assert compute_norm_stats(cfg, root, [0, 2], cache_dir=tmp_path / "cache").state.count == 10


def test_bad_inputs_are_named(libero_like, tmp_path):
    cfg, root, _ = libero_like
    with pytest.raises(ValueError, match=r"episodes \[99\] are not in dataset"):
        compute_norm_stats(cfg, root, [0, 99], cache_dir=tmp_path)
    with pytest.raises(ValueError, match="state key 'observation.state' is not a feature.*existing keys"):
        compute_norm_stats("pi05_metaworld", root, None, cache_dir=tmp_path)
    with pytest.raises(
        ValueError, match=r"action keys \{'actions': 7\} .* sum to 7 dims, but action_dim is 6"
    ):
        compute_norm_stats(dataclasses.replace(cfg, action_dim=6, delta_mask=(False,) * 6), root, None,
                           cache_dir=tmp_path)  # fmt: skip
    with pytest.raises(ValueError, match="method must be one of"):
        compute_norm_stats(cfg, root, None, cache_dir=tmp_path, method="median")


def test_numeric_only_dataset_needs_no_cameras(tmp_path):
    cfg = get_config_type("pi0_libero")
    episodes = random_episodes(np.random.default_rng(4), [30, 70], 8, 7)
    root = write_dataset(tmp_path / "ds", cfg, episodes, cameras=False, version="v2.0")
    stats = compute_norm_stats(cfg, root, None, cache_dir=tmp_path / "cache")
    _, actions = expand(episodes, cfg.action_horizon, cfg.delta_mask)
    np.testing.assert_array_equal(stats.actions.q50, np.quantile(actions, 0.5, axis=0).astype(np.float32))


def test_dim_labels_use_feature_names():
    features = {"a": {"shape": [2], "names": {"motors": ["x", "y"]}}, "b": {"shape": [1], "names": None}}
    assert dim_labels(features, ["a", "b"]) == ["a[0] x", "a[1] y", "b[0]"]


def test_cli_writes_openpi_layout(tmp_path):
    cfg = get_config_type("pi05_metaworld")
    root = make_synthetic_dataset(tmp_path / "ds", cfg, num_episodes=4, image_size=8)
    out = tmp_path / "norm_stats.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "steps.stats.norm_stats", "--config_type", "pi05_metaworld", "--dataset", str(root),
           "--out", str(out), "--cache_dir", str(tmp_path / "cache"), "--val_fraction", "0.25"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(out.resolve())
    data = json.loads(out.read_text())
    assert len(data["norm_stats"]["actions"]["q99"]) == 4 and len(data["metadata"]["episodes"]) == 3
    assert "out [-1,1]" in proc.stderr
    bad = subprocess.run([*cmd[:6], str(tmp_path / "missing")], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=300)  # fmt: skip
    assert bad.returncode == 2 and "no such folder" in bad.stderr
