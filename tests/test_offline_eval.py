"""Offline evaluation (steps/evaluate/offline.py): metrics against a brute-force recomputation, padding,
determinism, plots and bad input, on a tiny pi0.5 export and a tiny synthetic pi05_metaworld dataset."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from data_adapters.lerobot_reader import LeRobotFrames, read_numeric
from data_adapters.registry import get_config_type
from data_adapters.synthetic import make_synthetic_dataset
from data_adapters.transforms import collate
from steps.evaluate.offline import action_error_metrics, evaluate_offline, select_frames
from steps.policy import Policy
from steps.train.data_loader import ValSamples
from tests.policy_helpers import make_tiny_export

# seed 8 gives episode lengths 10, 11, 3, 8: episode 2 is shorter than pi05_metaworld's horizon (5).
LENGTHS = {0: 10, 1: 11, 2: 3, 3: 8}
HELD_OUT = [1, 2, 3]
HORIZON = 5


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("offline_eval")
    cfg = get_config_type("pi05_metaworld")
    root = make_synthetic_dataset(
        tmp / "data", cfg, num_episodes=4, min_len=3, max_len=12, image_size=32, seed=8
    )
    lengths = {e: len(a) for e, a in read_numeric(root, cfg.action_keys).items()}
    assert lengths == LENGTHS, "the synthetic generator changed; pick a seed with one episode shorter than 5"
    policy = Policy.from_export(make_tiny_export(tmp), device="cpu")
    assert policy.config_type.action_horizon == HORIZON
    return policy, root


def _brute_force_chunk(actions: np.ndarray, frame: int) -> tuple[np.ndarray, np.ndarray]:
    """Ground-truth chunk at ``frame`` and its padding, from the episode's action rows."""
    chunk, pad = [], []
    for k in range(HORIZON):
        pad.append(frame + k >= len(actions))
        chunk.append(actions[min(frame + k, len(actions) - 1)])
    return np.array(chunk), np.array(pad)


def _action_metrics(metrics: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in metrics.items() if not k.startswith("val_loss") and k != "num_samples"}


def test_metrics_equal_brute_force(setup):
    policy, root = setup
    ct = policy.config_type
    result = evaluate_offline(policy, root, HELD_OUT, num_samples=10, seed=3, batch_size=1)
    assert len(result.samples) == len(set(result.samples)) == 10
    assert {e for e, _ in result.samples} == set(HELD_OUT)
    # Spread: 10 over 3 episodes is 3 or 4 each (episode 2 has exactly 3 frames).
    per_episode = [sum(e == ep for e, _ in result.samples) for ep in HELD_OUT]
    assert sorted(per_episode) == [3, 3, 4]

    truth = read_numeric(root, ct.action_keys, episodes=HELD_OUT)
    frames = LeRobotFrames(root, state_keys=ct.state_keys, action_keys=ct.action_keys,
                           camera_keys=ct.camera_keys, horizon=HORIZON, episodes=HELD_OUT)  # fmt: skip
    starts = {1: 0, 2: LENGTHS[1], 3: LENGTHS[1] + LENGTHS[2]}
    sq_sum = ab_sum = count = first_sq = first_ab = 0.0
    dim_sq, dim_n = np.zeros(ct.action_dim), 0
    step_sq, step_ab, step_n = np.zeros(HORIZON), np.zeros(HORIZON), np.zeros(HORIZON)
    loss_sum = loss_n = 0.0
    for n, (episode, frame) in enumerate(result.samples):
        item = frames[starts[episode] + frame]
        obs = {"images": item["images"], "state": item["state"], "task": item["task"]}
        pred = policy.predict(obs).astype(np.float64)
        true, pad = _brute_force_chunk(truth[episode], frame)
        np.testing.assert_array_equal(result.action_is_pad[n], pad)
        for k in range(HORIZON):
            for d in range(ct.action_dim):
                err = pred[k, d] - true[k, d]
                if k == 0:
                    first_sq, first_ab = first_sq + err**2, first_ab + abs(err)
                if pad[k]:
                    continue
                sq_sum, ab_sum, count = sq_sum + err**2, ab_sum + abs(err), count + 1
                dim_sq[d] += err**2
                step_sq[k], step_ab[k], step_n[k] = step_sq[k] + err**2, step_ab[k] + abs(err), step_n[k] + 1
            dim_n += not pad[k]
        # Flow-matching loss: the training validation's noise/time for this frame and seed, mean over
        # all 32 dims and all steps (the trainer's default reduction).
        sample = ValSamples(
            frames, policy.input_transform, [starts[episode] + frame], seed=3, horizon=HORIZON
        )[0]
        noise, t = sample.pop("noise")[None], sample.pop("time")[None]
        sample.pop("position")
        with torch.no_grad():
            per_element = policy.model.compute_loss(collate([sample]), noise, t)
        loss_sum, loss_n = loss_sum + float(per_element.double().sum()), loss_n + per_element.numel()

    m = result.metrics
    n = len(result.samples)
    expected = {
        "val_action_mse": sq_sum / count,
        "val_action_mae": ab_sum / count,
        "val_first_step_mse": first_sq / (n * ct.action_dim),
        "val_first_step_mae": first_ab / (n * ct.action_dim),
        "val_loss": loss_sum / loss_n,
        "num_samples": 10.0,
    }
    expected.update({f"val_action_mse/dim_{d}": dim_sq[d] / dim_n for d in range(ct.action_dim)})
    expected.update({f"val_action_mse/step_{k}": step_sq[k] / step_n[k] for k in range(HORIZON)})
    expected.update({f"val_action_mae/step_{k}": step_ab[k] / step_n[k] for k in range(HORIZON)})
    assert set(m) == set(expected) | {"val_loss_robot_dims"}
    for name, value in expected.items():
        assert m[name] == pytest.approx(value, rel=1e-5, abs=1e-7), name
    assert all(isinstance(v, float) and np.isfinite(v) for v in m.values())


def test_deterministic_given_seed_and_batched_like_predict(setup):
    policy, root = setup
    a = evaluate_offline(policy, root, HELD_OUT, num_samples=6, seed=1, batch_size=4, val_loss=False)
    b = evaluate_offline(policy, root, HELD_OUT, num_samples=6, seed=1, batch_size=4, val_loss=False)
    assert a.samples == b.samples and a.metrics == b.metrics
    np.testing.assert_array_equal(a.predictions, b.predictions)
    assert select_frames(LENGTHS, 6, seed=2) != select_frames(LENGTHS, 6, seed=1)
    # Batches of 4 then 2, each one policy.predict call.
    ct = policy.config_type
    frames = LeRobotFrames(root, state_keys=ct.state_keys, action_keys=ct.action_keys,
                           camera_keys=ct.camera_keys, horizon=HORIZON, episodes=HELD_OUT)  # fmt: skip
    starts = {1: 0, 2: LENGTHS[1], 3: LENGTHS[1] + LENGTHS[2]}
    items = [frames[starts[e] + f] for e, f in a.samples]
    obs = [{k: it[k] for k in ("images", "state", "task")} for it in items]
    expected = np.concatenate([policy.predict(obs[:4]), policy.predict(obs[4:])])
    np.testing.assert_allclose(a.predictions, expected, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(a.ground_truth, np.stack([it["actions"] for it in items]))


def test_select_frames_spreads_and_caps():
    picked = select_frames(LENGTHS, 7, seed=0)
    assert picked == select_frames(LENGTHS, 7, seed=0)
    assert len(set(picked)) == 7 and all(0 <= f < LENGTHS[e] for e, f in picked)
    assert sorted(sum(e == ep for e, _ in picked) for ep in LENGTHS) == [1, 2, 2, 2]
    # A short episode gives its unused share to the others; more samples than frames -> every frame.
    picked = select_frames({0: 2, 1: 20}, 10, seed=0)
    assert sum(e == 0 for e, _ in picked) == 2 and len(picked) == 10
    assert select_frames({0: 2, 1: 3}, 100, seed=5) == [(0, 0), (0, 1), (1, 0), (1, 1), (1, 2)]


def test_padded_steps_are_excluded(setup):
    policy, root = setup
    # Episode 2 has 3 frames, fewer than the horizon: every chunk runs past its end.
    result = evaluate_offline(policy, root, [2], num_samples=50, seed=0, batch_size=8, val_loss=False)
    assert result.samples == [(2, 0), (2, 1), (2, 2)]
    expected_pad = np.arange(HORIZON)[None, :] + np.arange(3)[:, None] >= 3
    np.testing.assert_array_equal(result.action_is_pad, expected_pad)
    m = result.metrics
    assert (
        "val_action_mse/step_2" in m and "val_action_mse/step_3" not in m and "val_action_mse/step_4" not in m
    )
    # Step 2 is real only for frame 0.
    err = result.predictions[0, 2] - result.ground_truth[0, 2]
    assert m["val_action_mse/step_2"] == pytest.approx(float(np.mean(err.astype(np.float64) ** 2)), rel=1e-6)
    assert m["num_samples"] == 3.0

    # Garbage at padded positions changes nothing; at a real position it does.
    pred, true, pad = result.predictions.copy(), result.ground_truth, result.action_is_pad
    pred[pad] = 1e6
    assert action_error_metrics(pred, true, pad) == _action_metrics(m)
    pred[0, 0, 0] += 1.0
    assert action_error_metrics(pred, true, pad)["val_action_mse"] != m["val_action_mse"]


def test_plots_are_written(setup, tmp_path):
    policy, root = setup
    result = evaluate_offline(policy, root, HELD_OUT, num_samples=4, seed=0, batch_size=4, val_loss=False,
                              out_dir=tmp_path / "plots", plot_episodes=2)  # fmt: skip
    assert set(result.plots) == {"trajectories", "error_by_step"}
    for path in result.plots.values():
        assert path.parent == tmp_path / "plots"
        data = path.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5_000, path


def test_bad_input(setup):
    policy, root = setup
    with pytest.raises(ValueError, match=r"episodes \[7, 9\] are not in dataset .* indices 0\.\.3"):
        evaluate_offline(policy, root, [1, 7, 9])
    with pytest.raises(ValueError, match="num_samples must be > 0, got 0"):
        evaluate_offline(policy, root, HELD_OUT, num_samples=0)
    with pytest.raises(ValueError, match="batch_size must be > 0, got -1"):
        evaluate_offline(policy, root, HELD_OUT, batch_size=-1)
    with pytest.raises(ValueError, match="no held-out episodes"):
        evaluate_offline(policy, root, [])
    with pytest.raises(ValueError, match=r"loss_reduction must be one of \['all_dims', 'real_dims'\]"):
        evaluate_offline(policy, root, HELD_OUT, num_samples=1, loss_reduction="mean")
