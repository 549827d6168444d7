"""LIBERO: the suite table, start's checks and the install pin without LIBERO; then (slow) openpi's
observation conventions checked against the simulator itself, a scripted controller through our rollout
loop, and rollouts of the inference policy with suite metrics."""

from __future__ import annotations

import importlib.util
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest

from steps.sim.libero import suites
from steps.sim.libero.demonstrations import DEMO_DATASET, LiberoDataSpec, parse_libero_uri
from steps.sim.libero.env import quat_to_axis_angle

REPO = Path(__file__).resolve().parents[1]
TASK0 = suites.SUITES["libero_spatial"][0]
# Without LIBERO the simulator tests skip, unless VLA_SFT_REQUIRE_LIBERO=1 (.ci/run sets it) makes that a failure.
needs_libero = pytest.mark.skipif(
    importlib.util.find_spec("libero") is None and os.environ.get("VLA_SFT_REQUIRE_LIBERO") != "1",
    reason="LIBERO not installed (python -m steps.sim.libero.install)",
)


# ------------------------------------------------------------------------------------ no LIBERO needed
def test_suite_table_indices_prompts_and_limits():
    assert {s: len(t) for s, t in suites.SUITES.items()} == dict.fromkeys(suites.MAX_STEPS, 10)
    assert suites.MAX_STEPS == {
        "libero_spatial": 220,
        "libero_object": 280,
        "libero_goal": 300,
        "libero_10": 520,
    }
    assert suites.check_task_names(["0", TASK0], "libero_spatial") == (TASK0, TASK0)
    assert suites.suite_of(suites.SUITES["libero_10"][9]) == "libero_10"
    assert suites.task_prompt(suites.SUITES["libero_10"][0]) == (
        "put both the alphabet soup and the tomato sauce in the basket"
    )
    with pytest.raises(ValueError, match=r"libero_spatial has tasks 0\.\.9"):
        suites.check_task_names(["10"], "libero_spatial")
    with pytest.raises(
        ValueError, match=r"is not a task of suite libero_goal \(did you mean 'turn_on_the_stove'\?\)"
    ):
        suites.check_task_names(["turn_on_the_stov"], "libero_goal")
    with pytest.raises(ValueError, match=r"'libero_sptial' is not one of .*did you mean 'libero_spatial'"):
        suites.check_suite("libero_sptial")


def test_start_resolves_suite_and_tasks_and_refuses_bad_ones(tmp_path):
    from steps.config.validate import InputError, validate_run_inputs

    common = dict(demo=True, tracking_uri=f"sqlite:///{tmp_path}/m.db")
    rc = validate_run_inputs(config_type="pi05_libero", **common)
    assert (rc.eval.sim_suite, rc.eval.sim_tasks, rc.eval.sim_episodes) == ("libero_spatial", None, 2)
    rc = validate_run_inputs(config_type="pi0_libero", sim_suite="libero_10", sim_tasks="0,9", **common)
    assert rc.eval.sim_tasks == (suites.SUITES["libero_10"][0], suites.SUITES["libero_10"][9])
    assert type(rc).from_dict(rc.to_dict()) == rc
    for kwargs, match in [
        (dict(config_type="pi05_libero", sim_suite="libero_100"), r"^--sim_suite: LIBERO suite 'libero_100'"),
        (
            dict(config_type="pi05_metaworld", sim_suite="libero_10"),
            r"^--sim_suite: only LIBERO config types",
        ),
        (dict(config_type="pi05_libero", sim_tasks="reach-v3"), r"^--sim_tasks: LIBERO task 'reach-v3'"),
        (dict(config_type="pi05_libero", sim_workers=-1), r"^--sim_workers: must be an integer >= 0"),
        (dict(config_type="pi05_libero", dataset="libero://tasks=0&episodes=x"), r"^--dataset: libero://"),
    ]:
        with pytest.raises(InputError, match=match):
            validate_run_inputs(**kwargs, **common)


def test_libero_uri_spec_and_cache_key():
    spec = parse_libero_uri("libero://suite=libero_goal&tasks=0,turn_on_the_stove&episodes=2&resolution=64")
    assert spec.tasks == (suites.SUITES["libero_goal"][0], "turn_on_the_stove") and spec.resolution == 64
    assert spec.cache_key() == LiberoDataSpec(**spec.to_dict() | {"tasks": tuple(spec.tasks)}).cache_key()
    assert spec.cache_key() != LiberoDataSpec(suite="libero_goal", tasks=("0",), episodes=2).cache_key()
    with pytest.raises(ValueError, match=r"first_state \+ episodes: each task has 50 initial states"):
        parse_libero_uri("libero://episodes=45&first_state=10")
    with pytest.raises(ValueError, match=r"cannot read 'colour=red'"):
        parse_libero_uri("libero://colour=red")


def test_install_pin_matches_pyproject_extra():
    from steps.sim.libero.install import LIBERO_REQUIREMENT

    text = (REPO / "pyproject.toml").read_text()
    assert re.search(rf'^libero = \["{re.escape(LIBERO_REQUIREMENT)}"\]', text, re.M), LIBERO_REQUIREMENT


def test_axis_angle_of_known_rotations():
    np.testing.assert_allclose(quat_to_axis_angle([0, 0, 0, 1]), [0, 0, 0])
    half = np.sqrt(0.5)
    np.testing.assert_allclose(quat_to_axis_angle([half, 0, 0, half]), [np.pi / 2, 0, 0], atol=1e-9)
    np.testing.assert_allclose(quat_to_axis_angle([0, 0, 1, 0]), [0, 0, np.pi], atol=1e-9)  # 180° about z


def test_missing_assets_offline_fail_in_one_line_naming_the_command(tmp_path, monkeypatch):
    from steps.sim.libero import runtime

    if importlib.util.find_spec("libero") is None:
        with pytest.raises(runtime.LiberoNotReady, match=r"run `python -m steps.sim.libero.install`$"):
            runtime.check_ready(renderer=False)
        return
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv(runtime.CONFIG_ENV, str(tmp_path / "config"))
    with pytest.raises(runtime.LiberoNotReady) as err:
        runtime.check_ready(renderer=False, package=tmp_path / "libero", hub_cache=tmp_path / "hub")
    assert str(err.value).endswith("run `python -m steps.sim.libero.install --offline-assets`")
    assert "\n" not in str(err.value)
    # The config LIBERO would otherwise ask for on stdin was written.
    assert json.loads((tmp_path / "config" / "config.yaml").read_text())["bddl_files"].endswith("bddl_files")


def test_shipped_demo_dataset_is_libero_schema_and_real_libero_frames():
    from data_adapters.config_types import validate_against_dataset
    from data_adapters.lerobot_format import INFO_PATH, read_meta
    from data_adapters.registry import get_config_type
    from steps.fetch.run_inputs import demo_dataset

    info = json.loads((DEMO_DATASET / INFO_PATH).read_text())
    for name in ("pi0_libero", "pi05_libero"):
        validate_against_dataset(get_config_type(name), info)
        assert demo_dataset(get_config_type(name)) == DEMO_DATASET
    meta = json.loads((DEMO_DATASET / "meta" / "libero.json").read_text())
    assert meta["spec"]["tasks"] == [TASK0] and [e["init_state"] for e in meta["episodes"]] == list(
        range(10, 16)
    )
    read = read_meta(DEMO_DATASET)
    assert len(read.episodes) == 6 and read.total_frames == 360 and read.fps == 20
    assert list(read.tasks.values()) == [suites.task_prompt(TASK0)]
    size = sum(p.stat().st_size for p in DEMO_DATASET.rglob("*") if p.is_file())
    assert size < 4 * 2**20, size


# ------------------------------------------------------------------------------- against LIBERO itself
@pytest.fixture(scope="module")
def task_env():
    from steps.sim.libero.env import LiberoTaskEnv

    env = LiberoTaskEnv(TASK0, resolution=128)
    yield env
    env.close()


@needs_libero
@pytest.mark.slow
def test_suite_table_and_init_states_match_installed_libero():
    from steps.sim.libero.env import load_init_states
    from steps.sim.libero.runtime import configure

    configure()
    import torch  # LIBERO loads its init states with torch.load(weights_only=False); we do not
    from libero.libero import benchmark, get_libero_path

    for suite, names in suites.SUITES.items():
        ours = benchmark.get_benchmark_dict()[suite]()
        assert [ours.get_task(i).name for i in range(ours.n_tasks)] == list(names)
        assert [ours.get_task(i).language for i in range(ours.n_tasks)] == [
            suites.task_prompt(n) for n in names
        ]
    spatial = benchmark.get_benchmark_dict()["libero_spatial"]()
    path = Path(get_libero_path("init_states")) / "libero_spatial" / spatial.get_task(0).init_states_file
    theirs = torch.load(path, weights_only=False)
    np.testing.assert_array_equal(load_init_states(path), theirs)
    assert load_init_states(path).shape[0] == suites.INIT_STATES_PER_TASK


@needs_libero
@pytest.mark.slow
def test_observation_follows_openpi_conventions(task_env):
    """Image size and rotation, state construction and the settling steps, checked on LIBERO's own
    observation; and the policy's image is upright and unmirrored: a marker-coloured gripper appears where
    a pinhole projection through the agentview camera puts it in a person's view."""
    from steps.sim.libero.env import WAIT_STEPS

    env = task_env
    env.reset(0, seed=0)
    rs = env.robosuite_env
    assert rs.timestep == WAIT_STEPS  # the settling steps ran, and the episode's step count starts at 0
    assert env.steps == 0
    np.testing.assert_allclose(rs.sim.data.qvel[rs.robots[0]._ref_joint_vel_indexes], 0.0, atol=0.05)
    raw = env.raw_observation()
    obs = env.observe()
    assert (
        obs["task"]
        == env.prompt
        == "pick up the black bowl between the plate and the ramekin and place it on the plate"
    )
    for key, cam in (("image", "agentview_image"), ("wrist_image", "robot0_eye_in_hand_image")):
        assert obs["images"][key].shape == (128, 128, 3) and obs["images"][key].dtype == np.uint8
        np.testing.assert_array_equal(obs["images"][key], raw[cam][::-1, ::-1])
    expected = np.concatenate(
        [raw["robot0_eef_pos"], quat_to_axis_angle(raw["robot0_eef_quat"]), raw["robot0_gripper_qpos"]]
    )
    np.testing.assert_allclose(obs["state"], expected, rtol=1e-6)
    assert obs["state"].shape == (8,) and obs["state"].dtype == np.float32

    # Paint the gripper pure green, find it in the policy's image, compare with the projection.
    model, data = rs.sim.model, rs.sim.data
    green = [
        g for g in range(model.ngeom) if model.body_id2name(model.geom_bodyid[g]).startswith("gripper0_")
    ]
    model._model.geom_rgba[green] = [0, 1, 0, 1]
    model._model.geom_matid[green] = -1
    image = env.observe()["images"]["image"].astype(int)
    mask = (image[..., 1] > 90) & (image[..., 0] < 60) & (image[..., 2] < 60)
    assert mask.sum() > 10, "the green gripper is not in the agentview image"
    found = np.argwhere(mask).mean(axis=0)  # (row, col)
    cam = model.camera_name2id("agentview")
    rot = data.cam_xmat[cam].reshape(3, 3)  # columns: camera x (right), y (up), z (backwards)
    d = rot.T @ (data.site_xpos[model.site_name2id("gripper0_grip_site")] - data.cam_xpos[cam])
    focal = 64 / np.tan(np.deg2rad(model.cam_fovy[cam]) / 2)
    projected = np.array([64 - focal * d[1] / -d[2], 64 + focal * d[0] / -d[2]])
    assert np.abs(found - projected).max() < 12, (found, projected)
    mirrored = np.array([127 - projected[0], 127 - projected[1]])  # where the raw (unrotated) render has it
    assert np.abs(found - mirrored).max() > 20, "test cannot tell rotated from raw here"


@needs_libero
@pytest.mark.slow
def test_scripted_controller_through_the_rollout_loop_moves_the_end_effector_as_commanded():
    """A proportional controller, queried every step through run_benchmark, drives the end effector to a
    point 6 cm away on every axis; the states the loop hands back land there."""
    from steps.sim.libero.demonstrations import scripted_action
    from steps.sim.rollout import run_benchmark

    seen: list[np.ndarray] = []
    target: list[np.ndarray] = []

    def controller(observations):
        state = observations[0]["state"]
        if not target:
            target.append(state[:3] + np.array([0.06, -0.06, 0.06]))
        seen.append(state[:3].copy())
        return [scripted_action(state[:3], target[0], -1.0)[None]]

    result = run_benchmark("libero", controller, [TASK0], 1, [0], options={"resolution": 64}, max_steps=40,
                           replan_steps=1, log=None)  # fmt: skip
    assert result.episodes[0].steps == 40 and len(seen) == 40
    assert np.linalg.norm(seen[0] - target[0]) > 0.09
    assert np.linalg.norm(seen[-1] - target[0]) < 0.01, (seen[-1], target[0])
    # Each axis moved the commanded way (no axis flipped between the action and the world frame).
    assert np.all(np.sign(seen[-1] - seen[0]) == [1, -1, 1])


@needs_libero
@pytest.mark.slow
def test_inference_policy_rollouts_report_task_and_suite_success(tmp_path):
    """The registered model's path (steps.policy.Policy from an export) rolled out in LIBERO through
    evaluate_export, in this process (the flow demo runs two worker processes): per-task and per-suite
    success metrics, episode lengths, a rollout GIF."""
    import torch

    from steps.evaluate.export_eval import evaluate_export
    from tests.policy_helpers import make_tiny_export

    torch.set_num_threads(1)
    export = make_tiny_export(tmp_path, "pi05_libero")
    result = evaluate_export(export, DEMO_DATASET, [5], max_samples=4, out_dir=tmp_path / "out", sim_episodes=2,
                             sim_max_steps=12, sim_workers=0)  # fmt: skip
    m = result.metrics
    assert m["sim/episodes"] == 2 and m[f"sim/success/{TASK0}"] == m["sim/suite/libero_spatial"] == 0.0
    assert m["sim/episode_length_mean"] == 12
    assert result.details["sim_workers"] == 0 and result.details["sim_timings"]["render"] > 0
    assert [e["episode"] for e in result.details["sim_episodes"]] == [0, 1]
    gifs = [n for n in result.artifacts if n.endswith(".gif")]
    assert gifs and all(os.path.getsize(result.artifacts[n]) > 1000 for n in gifs)
    episodes = json.loads(Path(result.artifacts["rollouts/episodes.json"]).read_text())
    assert episodes["benchmark"] == "libero" and episodes["per_group"] == {"libero_spatial": 0.0}


@needs_libero
@pytest.mark.slow
def test_demo_flow_trains_rolls_out_in_libero_registers_and_gates_on_the_suite(tmp_path):
    """`run --config_type pi05_libero --demo`, offline: LIBERO rollouts of the trained tiny model; success
    metrics and a rollout GIF in MLflow; a registered version that steps.promote can gate on the suite."""
    from mlflow.tracking import MlflowClient

    from steps.registry.promote import promote
    from tests.test_flow import flow_env, inspect_run, run_flow

    result = run_flow(tmp_path, "run", "--config_type", "pi05_libero", "--demo", "--max_steps", "8",
                      "--sim_max_steps", "20", env=flow_env(tmp_path))  # fmt: skip
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    info = inspect_run(tmp_path)
    assert info["successful"] and info["run_config"]["eval"]["sim_suite"] == "libero_spatial"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    metrics = client.get_run(info["mlflow_run_id"]).data.metrics
    assert metrics["eval/sim/episodes"] == 2 and metrics["eval/sim/episode_length_mean"] <= 20
    assert 0.0 <= metrics["eval/sim/suite/libero_spatial"] == metrics[f"eval/sim/success/{TASK0}"] <= 1.0
    rollouts = {f.path for f in client.list_artifacts(info["mlflow_run_id"], "eval/rollouts")}
    assert "eval/rollouts/episodes.json" in rollouts and any(p.endswith(".gif") for p in rollouts)
    version = info["model_version"]
    gate = promote(
        version["name"], version["version"], gates=["sim/suite/libero_spatial>=0"], tracking_uri=uri
    )
    assert gate.promoted, gate.failures
    refused = promote(version["name"], version["version"], gates=["sim/suite/libero_spatial>=1.01"],
                      tracking_uri=uri)  # fmt: skip
    assert not refused.promoted


def test_evaluate_stops_before_the_first_episode_with_one_line_naming_the_fix(tmp_path, monkeypatch):
    """A broken renderer (here: a backend that cannot run headless) stops evaluate_export before any
    rollout, with the fix in one line, whether or not LIBERO is installed."""
    from steps.evaluate.export_eval import evaluate_export
    from steps.sim.base import SimulatorNotReady
    from tests.policy_helpers import make_tiny_export

    export = make_tiny_export(tmp_path, "pi05_libero")
    monkeypatch.setenv("MUJOCO_GL", "glx")
    with pytest.raises(SimulatorNotReady) as err:
        evaluate_export(export, DEMO_DATASET, [5], max_samples=2, out_dir=tmp_path / "out", sim_episodes=1)
    message = str(err.value)
    assert "\n" not in message and (
        "MUJOCO_GL=egl or osmesa" in message or "steps.sim.libero.install" in message
    )
    assert not (tmp_path / "out" / "rollouts").exists()


@needs_libero
@pytest.mark.slow
def test_every_suite_builds_resets_and_observes_with_the_installed_assets():
    """libero_object, libero_goal and libero_10 use other scenes and objects than libero_spatial (the
    offline assets need all five packages): the first task of each builds, resets from initial state 0 and
    renders an 8-d state and two images."""
    from steps.sim.libero.env import LiberoTaskEnv

    for suite in ("libero_object", "libero_goal", "libero_10"):
        env = LiberoTaskEnv(suites.SUITES[suite][0], resolution=32)
        try:
            env.reset(0)
            obs = env.observe()
            assert obs["state"].shape == (8,) and obs["images"]["wrist_image"].shape == (32, 32, 3), suite
            assert obs["images"]["image"].std() > 5, f"{suite}: a blank agentview image"
        finally:
            env.close()


@needs_libero
@pytest.mark.slow
def test_hard_resets_reproduce_episodes_and_soft_resets_are_faster_and_close():
    """The default (hard) reset gives the same start for the same initial state whatever ran before; the
    soft option is much faster and starts within a millimetre."""
    import time

    from steps.sim.libero.env import LiberoTaskEnv

    starts, seconds = {}, {}
    for hard in (True, False):
        env = LiberoTaskEnv(TASK0, resolution=32, hard_reset=hard)
        try:
            runs = []
            for state in (0, 1, 0):
                began = time.perf_counter()
                env.reset(state)
                runs.append((time.perf_counter() - began, env.observe()["state"]))
        finally:
            env.close()
        starts[hard], seconds[hard] = [r[1] for r in runs], min(r[0] for r in runs[1:])
    np.testing.assert_array_equal(starts[True][0], starts[True][2])
    np.testing.assert_allclose(starts[False][2], starts[True][0], atol=1e-3)
    assert seconds[False] < seconds[True] / 3, seconds


def test_rollout_tasks_follow_the_suite_and_the_demo_dataset():
    from steps.evaluate.export_eval import sim_tasks_for

    assert sim_tasks_for(DEMO_DATASET, None, "libero", "libero_spatial") == [TASK0]  # the demo's task
    assert sim_tasks_for(DEMO_DATASET, None, "libero", "libero_10") == list(suites.SUITES["libero_10"])
    assert sim_tasks_for(DEMO_DATASET, ["3"], "libero", "libero_goal") == [suites.SUITES["libero_goal"][3]]
    assert sim_tasks_for(REPO, None, "libero", None) == list(suites.SUITES["libero_spatial"])  # not generated


@pytest.mark.slow
def test_flow_without_a_headless_renderer_fails_in_evaluate_with_one_line_and_no_traceback(tmp_path):
    """Item: evaluate checks the renderer before the first episode; the flow shows the fix, not a renderer
    traceback (MUJOCO_GL=glx cannot render headless here)."""
    from tests.test_flow import flow_env, run_flow

    env = flow_env(tmp_path, MUJOCO_GL="glx")
    result = run_flow(tmp_path, "run", "--config_type", "pi05_libero", "--demo", "--max_steps", "2",
                      "--sim_episodes", "1", env=env)  # fmt: skip
    out = result.stdout + result.stderr
    assert result.returncode != 0
    assert "Simulator not ready" in out and "headless rendering needs MUJOCO_GL=egl or osmesa" in out, out[
        -3000:
    ]
    assert "Traceback (most recent call last)" not in out, out[-3000:]
