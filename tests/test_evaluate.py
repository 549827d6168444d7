"""evaluate_export: offline metrics + closed-loop Meta-World, through the registered model's policy."""

from __future__ import annotations

from pathlib import Path

import pytest

from steps.evaluate.export_eval import evaluate_export, sim_tasks_for
from steps.evaluate.settings import check_sim_tasks, sim_settings
from steps.sim.metaworld.demonstrations import DEMO_DATASET
from tests.policy_helpers import make_tiny_export


def test_export_is_evaluated_offline_and_in_the_simulator(tmp_path):
    export = make_tiny_export(tmp_path, "pi05_metaworld")
    result = evaluate_export(
        export, DEMO_DATASET, [0, 5], max_samples=4, batch_size=2, out_dir=tmp_path / "out",
        sim_episodes=1, sim_max_steps=10, sim_tasks=["reach-v3"],
    )  # fmt: skip
    m = result.metrics
    for key in ("val_loss", "val_action_mse", "val_action_mae", "val_first_step_mse", "sim/success_rate"):
        assert key in m and m[key] == m[key], key  # present and not NaN
    assert 0.0 <= m["sim/success_rate"] <= 1.0 and m["sim/episodes"] == 1.0
    assert result.episodes == [0, 5] and result.num_samples == 4
    assert result.details["sim_tasks"] == ["reach-v3"]
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
