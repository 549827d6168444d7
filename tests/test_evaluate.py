"""evaluate_export: offline metrics + closed-loop Meta-World, through the registered model's policy."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from steps.evaluate.export_eval import evaluate_export, sim_tasks_for
from steps.evaluate.settings import check_sim_tasks, sim_settings
from steps.sim.metaworld.demonstrations import DEMO_DATASET
from tests.policy_helpers import make_tiny_export


def test_export_is_evaluated_offline_and_in_the_simulator(tmp_path, capsys):
    export = make_tiny_export(tmp_path, "pi05_metaworld")
    result = evaluate_export(
        export, DEMO_DATASET, [0, 5], max_samples=4, batch_size=2, out_dir=tmp_path / "out",
        sim_episodes=1, sim_max_steps=10, sim_tasks=["reach-v3", "button-press-v3"], progress_every_s=0,
    )  # fmt: skip
    # Progress: with a 0 s interval a line after every batch of offline frames, then a closing line (the
    # interval itself: tests/test_progress.py); one line per closed-loop episode with its result and steps.
    lines = capsys.readouterr().out.splitlines()
    offline = [line for line in lines if line.startswith("offline eval: ")]
    counts = [line.split(" · ")[0] for line in offline]
    assert counts == ["offline eval: 2/4 frames (50%)"] + ["offline eval: 4/4 frames (100%)"] * 2
    assert "ETA" in offline[0] and offline[-1].endswith("2 held-out episodes")
    episodes = [line for line in lines if line.startswith("closed loop: ") and "episode 1/1" in line]
    assert len(episodes) == 2, lines
    assert re.fullmatch(r"closed loop: 1/2 episodes \(50%\) · \d\d:\d\d:\d\d elapsed · ETA \d\d:\d\d:\d\d · "
                        r"reach-v3 episode 1/1 \(seed 1000\): (success|no success) after \d+ steps", episodes[0])  # fmt: skip
    assert episodes[1].startswith("closed loop: 2/2 episodes (100%)") and "button-press-v3" in episodes[1]
    m = result.metrics
    for key in ("val_loss", "val_action_mse", "val_action_mae", "val_first_step_mse", "sim/success_rate"):
        assert key in m and m[key] == m[key], key  # present and not NaN
    assert 0.0 <= m["sim/success_rate"] <= 1.0 and m["sim/episodes"] == 2.0
    assert result.episodes == [0, 5] and result.num_samples == 4
    assert result.details["sim_tasks"] == ["reach-v3", "button-press-v3"]
    names = set(result.artifacts)
    assert {"plots/action_trajectories.png", "plots/error_by_step.png"} <= names
    assert any(n.startswith("rollouts/") for n in names)
    for path in result.artifacts.values():
        assert Path(path).is_file() and Path(path).stat().st_size > 0


def test_simulator_off_and_non_simulator_types_skip_rollouts(tmp_path):
    export = make_tiny_export(tmp_path, "pi05_metaworld")
    result = evaluate_export(export, DEMO_DATASET, [1], max_samples=2, sim_episodes=0)
    assert not any(k.startswith("sim/") for k in result.metrics)


def test_sim_settings_and_validation():
    assert sim_settings(True, None, None) == (2, 100)
    assert sim_settings(False, None, None) == (10, None)  # None: the benchmark's own step limit
    assert sim_settings(True, 0, 20) == (0, 20)
    with pytest.raises(
        ValueError, match="--sim_episodes / --sim_max_steps: must be >= 0 / > 0, got -1 / 100"
    ):
        sim_settings(True, -1, None)
    with pytest.raises(ValueError, match=r"--sim_tasks: tasks: unknown Meta-World environment 'reach-v9'"):
        check_sim_tasks("reach-v3, reach-v9")
    assert sim_tasks_for(DEMO_DATASET, None) == ["reach-v3", "button-press-v3", "drawer-close-v3"]
    assert sim_tasks_for(DEMO_DATASET, ["push-v3"]) == ["push-v3"]


def test_bad_episodes_are_named(tmp_path):
    export = make_tiny_export(tmp_path, "pi05_metaworld")
    with pytest.raises(ValueError, match="episodes: no held-out episodes"):
        evaluate_export(export, DEMO_DATASET, [], sim_episodes=0)
    with pytest.raises(ValueError, match="99"):
        evaluate_export(export, DEMO_DATASET, [99], sim_episodes=0)
