"""ManiSkill3: the task table and maniskill:// source (fast), and, in the ManiSkill venv, motion-planned
demonstrations read back through our reader in the pi0_maniskill schema, the shipped demo dataset, the
Vulkan check, and the worker's errors.

The slow tests need the ManiSkill venv (``python -m steps.sim.maniskill.venv``) and a Vulkan device (Mesa >=
25); without them they skip, unless ``VLA_SFT_REQUIRE_MANISKILL=1`` (.ci/run sets it) makes that a failure.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from data_adapters.config_types import validate_against_dataset
from data_adapters.registry import get_config_type
from steps.sim.maniskill import demonstrations as ms_data
from steps.sim.maniskill import tasks as ms_tasks

RES = 64


# ------------------------------------------------------------------------------------------- fast
def test_task_table_refuses_unknown_and_download_tasks():
    assert ms_tasks.check_task_names(["PickCube-v1", "StackCube-v1"]) == ("PickCube-v1", "StackCube-v1")
    with pytest.raises(ValueError, match=r"PickSingleYCB-v1 needs an asset download.*PickCube-v1"):
        ms_tasks.check_task_names(["PickSingleYCB-v1"])
    with pytest.raises(ValueError, match=r"unknown ManiSkill task 'PickCube-v9'"):
        ms_tasks.check_task_names(["PickCube-v9"])
    with pytest.raises(ValueError, match="non-empty list"):
        ms_tasks.check_task_names("PickCube-v1")
    assert ms_tasks.max_steps("PickCube-v1") == 200 and "red cube" in ms_tasks.prompt("PickCube-v1")


def test_uri_parses_into_spec_and_cache_key():
    spec = ms_data.parse_maniskill_uri("maniskill://tasks=PickCube-v1,StackCube-v1&episodes=3&resolution=96")
    assert spec.tasks == ("PickCube-v1", "StackCube-v1") and spec.episodes == 3 and spec.resolution == 96
    assert spec.cache_key().startswith("ms-2tasks-3ep-96px-")
    assert (
        spec.cache_key()
        != ms_data.parse_maniskill_uri(
            "maniskill://tasks=PickCube-v1,StackCube-v1&episodes=3&resolution=96&seed=1"
        ).cache_key()
    )


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("maniskill://episodes=3", "missing tasks"),
        ("maniskill://tasks=PickCube-v1&episodes=x", "episodes must be an integer"),
        ("maniskill://tasks=PickCube-v1&colour=red", "cannot read 'colour=red'"),
        ("maniskill://tasks=PickCube-v1&resolution=8", "resolution: expected 16..1024"),
        ("maniskill://tasks=PickSingleYCB-v1", "needs an asset download"),
        ("metaworld://tasks=reach-v3", "expected a URI starting with 'maniskill://'"),
    ],
)
def test_bad_uri_is_refused_naming_the_field(uri, message):
    with pytest.raises(ValueError, match=message):
        ms_data.parse_maniskill_uri(uri)


def test_source_must_fit_the_config_type():
    features = ms_data.maniskill_features(128)
    for name in ("pi0_maniskill", "pi05_maniskill"):
        cfg = get_config_type(name)
        assert cfg.simulator == "maniskill"
        validate_against_dataset(cfg, {"features": features})
        ms_data.check_maniskill_source("maniskill://tasks=PickCube-v1", cfg)
    with pytest.raises(ValueError, match=r"does not fit: config type 'pi05_libero': cameras names 'image'"):
        ms_data.check_maniskill_source("maniskill://tasks=PickCube-v1", get_config_type("pi05_libero"))


def test_start_accepts_a_maniskill_source_and_names_the_option(tmp_path):
    from steps.config.validate import InputError, validate_run_inputs

    common = dict(tracking_uri=f"file://{tmp_path}/mlruns", check_tracking=False, check_remote=False)
    rc = validate_run_inputs(config_type="pi05_maniskill", dataset="maniskill://tasks=PickCube-v1&episodes=4",
                             **common)  # fmt: skip
    assert (
        rc.data.dataset_kind == "maniskill" and rc.data.dataset == "maniskill://tasks=PickCube-v1&episodes=4"
    )
    with pytest.raises(InputError, match=r"--dataset: .*unknown ManiSkill task 'Nope-v1'"):
        validate_run_inputs(config_type="pi05_maniskill", dataset="maniskill://tasks=Nope-v1", **common)
    with pytest.raises(InputError, match=r"--dataset: .*does not fit: config type 'pi05_metaworld'"):
        validate_run_inputs(config_type="pi05_metaworld", dataset="maniskill://tasks=PickCube-v1", **common)


def test_a_yaml_type_of_another_schema_cannot_declare_the_maniskill_simulator(tmp_path):
    from steps.config.validate import InputError, validate_run_inputs

    common = dict(tracking_uri=f"file://{tmp_path}/mlruns", check_tracking=False, check_remote=False,
                  dataset="maniskill://tasks=PickCube-v1")  # fmt: skip
    fits = tmp_path / "fits.yaml"
    fits.write_text("name: my_maniskill\nextends: pi0_maniskill\naction_horizon: 20\nsimulator: maniskill\n")
    assert validate_run_inputs(config_type=str(fits), **common).config_type.simulator == "maniskill"
    wrist = tmp_path / "wrist.yaml"
    wrist.write_text("name: wrist\nextends: pi05_maniskill\ncameras:\n  base_0_rgb: observation.images.top\n"
                     "  left_wrist_0_rgb: observation.images.wrist\n")  # fmt: skip
    with pytest.raises(
        InputError, match=r"simulator: maniskill observes .*'wrist' does not fit.*simulator: null"
    ):
        validate_run_inputs(config_type=str(wrist), demo=True, tracking_uri=common["tracking_uri"],
                            check_tracking=False)  # fmt: skip
    rc = validate_run_inputs(config_type=str(wrist), demo=True, sim_episodes=0, tracking_uri=common["tracking_uri"],
                             check_tracking=False)  # fmt: skip
    assert rc.eval.sim_episodes == 0


# ------------------------------------------------------------------------------------------- slow
def _need_maniskill() -> None:
    from steps.sim.maniskill.venv import is_ready, venv_dir

    if is_ready():
        return
    why = f"no ManiSkill venv at {venv_dir()} (python -m steps.sim.maniskill.venv builds it)"
    if os.environ.get("VLA_SFT_REQUIRE_MANISKILL") == "1":
        pytest.fail(why)
    pytest.skip(why)


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """PickCube-v1 x 3 planned episodes at 64², AV1, through the cached maniskill:// source."""
    _need_maniskill()
    cache = tmp_path_factory.mktemp("ms_cache")
    uri = f"maniskill://tasks=PickCube-v1&episodes=3&resolution={RES}"
    root = ms_data.fetch_maniskill(uri, cache)
    return uri, cache, root


@pytest.mark.slow
def test_generated_dataset_reads_back_in_the_pi0_maniskill_schema(generated):
    from data_adapters.lerobot_format import INFO_PATH, read_meta
    from data_adapters.lerobot_reader import LeRobotFrames, read_numeric

    _, _, root = generated
    cfg = get_config_type("pi0_maniskill")
    info = json.loads((root / INFO_PATH).read_text())
    validate_against_dataset(cfg, info)
    meta = read_meta(root)
    assert meta.version == "v3.0" and meta.fps == 20 and len(meta.episodes) == 3
    assert meta.features["observation.images.top"]["shape"] == [RES, RES, 3]
    assert meta.features["observation.state"]["names"] == ms_data.STATE_NAMES
    assert meta.features["actions"]["names"] == ms_data.ACTION_NAMES
    gen = ms_data.read_generation_meta(root)
    assert gen["control_mode"] == "pd_ee_delta_pose" and [e["seed"] for e in gen["episodes"]] == [0, 1, 2]
    numeric = read_numeric(root, ["observation.state", "actions", "next.success"])
    for ep in gen["episodes"]:
        values = numeric[ep["episode_index"]]
        assert values.shape == (ep["length"], 15)  # state 7 + actions 7 + success 1
        state, actions, success = values[:, :7], values[:, 7:14], values[:, 14].astype(bool)
        assert success[-1] and not success[:-1].any()  # stops at the first success
        assert np.abs(actions).max() <= 1.0 + 1e-6 and set(np.unique(actions[:, 6])) <= {-1.0, 1.0}
        assert state[:, 6].min() >= -0.001 and state[:, 6].max() <= 0.081  # gripper opening in metres
        assert state[0, 6] > 0.07 and state[:, 6].min() < 0.05  # starts open, closes on the cube
    frames = LeRobotFrames(root, state_keys=cfg.state_keys, action_keys=cfg.action_keys,
                           camera_keys=cfg.camera_keys, horizon=cfg.action_horizon)  # fmt: skip
    item = frames[0]
    image = item["images"]["observation.images.top"]
    assert image.shape == (RES, RES, 3) and image.dtype == np.uint8 and image.std() > 10
    assert item["state"].shape == (7,) and item["actions"].shape == (cfg.action_horizon, 7)
    assert item["task"] == ms_tasks.prompt("PickCube-v1")


@pytest.mark.slow
def test_fetch_reuses_the_cache(generated):
    uri, cache, root = generated
    lines: list[str] = []
    assert ms_data.fetch_maniskill(uri, cache, log=lines.append) == root
    assert lines == [f"[maniskill] cached: {root}"]


@pytest.mark.slow
def test_generate_refuses_a_non_empty_output(tmp_path):
    (tmp_path / "x").write_text("")
    with pytest.raises(FileExistsError, match="not empty"):
        ms_data.generate_demonstrations(ms_data.ManiskillDataSpec(tasks=("PickCube-v1",)), tmp_path)


@pytest.mark.slow
def test_shipped_demo_dataset_fits_pi05_maniskill():
    from data_adapters.lerobot_format import INFO_PATH
    from steps.fetch.run_inputs import demo_dataset

    cfg = get_config_type("pi05_maniskill")
    assert demo_dataset(cfg) == ms_data.DEMO_DATASET
    validate_against_dataset(cfg, json.loads((ms_data.DEMO_DATASET / INFO_PATH).read_text()))
    gen = ms_data.read_generation_meta(ms_data.DEMO_DATASET)
    assert gen["control_mode"] == "pd_ee_delta_pose" and {e["task"] for e in gen["episodes"]} == {
        "PickCube-v1"
    }


@pytest.mark.slow
def test_preflight_names_the_package_when_no_vulkan_driver_loads(monkeypatch):
    from steps.sim.base import SimulatorNotReady
    from steps.sim.maniskill.sim import ManiskillSimulator

    _need_maniskill()
    ManiskillSimulator.preflight()  # the machine's own driver works
    monkeypatch.setenv("VK_ICD_FILENAMES", "/nonexistent/icd.json")  # the Vulkan loader then finds no driver
    with pytest.raises(
        SimulatorNotReady, match=r"install mesa-vulkan-drivers >= 25.*SAPIEN said: .*Incompatible"
    ):
        ManiskillSimulator.preflight()


def test_preflight_without_the_venv_names_the_command_that_builds_it(monkeypatch, tmp_path):
    from steps.sim.base import SimulatorNotReady
    from steps.sim.maniskill.sim import ManiskillSimulator

    monkeypatch.setenv("VLA_SFT_MANISKILL_VENV", str(tmp_path / "none"))
    with pytest.raises(
        SimulatorNotReady,
        match=r"no working venv at .*none; build it once: python -m steps.sim.maniskill.venv",
    ):
        ManiskillSimulator.preflight()


def _demo_episodes(root, count: int) -> list[tuple[int, np.ndarray]]:
    from data_adapters.lerobot_reader import read_numeric

    gen = ms_data.read_generation_meta(root)
    numeric = read_numeric(root, ["actions"])
    return [(ep["seed"], numeric[ep["episode_index"]]) for ep in gen["episodes"][:count]]


class ReplayPolicy:
    """Plays stored episodes' actions back, one episode after the other (one worker runs them in order):
    the first query of an episode gets its whole action sequence as one chunk, later ones hold still."""

    def __init__(self, episodes: list[tuple[int, np.ndarray]]):
        self.episodes, self.current, self.fresh = list(episodes), -1, False

    def start(self) -> None:
        self.current, self.fresh = self.current + 1, True

    def __call__(self, observations: list[dict]) -> list[np.ndarray]:
        assert len(observations) == 1 and observations[0]["state"].shape == (7,)
        if self.fresh:
            self.fresh = False
            return [self.episodes[self.current][1]]
        return [np.zeros((1, 7), np.float32)]  # plan exhausted without success: keep the arm still


@pytest.mark.slow
def test_planned_demonstrations_replayed_through_the_rollout_loop_succeed(tmp_path):
    """The action path end to end: a dataset's stored actions, in the dataset's control mode, through the
    one rollout loop and a worker of the ManiSkill venv, solve the task again from the stored seeds."""
    from steps.evaluate.export_eval import sim_options_for
    from steps.sim.rollout import run_benchmark

    _need_maniskill()
    episodes = _demo_episodes(ms_data.DEMO_DATASET, 6)
    policy = ReplayPolicy(episodes)
    result = run_benchmark(
        "maniskill", policy, ["PickCube-v1"], len(episodes), [seed for seed, _ in episodes],
        options={"resolution": None, **sim_options_for(ms_data.DEMO_DATASET, "maniskill")},
        max_steps=max(len(a) for _, a in episodes) + 10, workers=1, on_episode_start=policy.start, log=None,
    )  # fmt: skip
    assert sim_options_for(ms_data.DEMO_DATASET, "maniskill") == {"control_mode": "pd_ee_delta_pose"}
    assert result.success_rate >= 0.8, result.episodes
    assert [o.seed for o in result.episodes] == [seed for seed, _ in episodes]
    for outcome, (_, actions) in zip(result.episodes, episodes, strict=True):
        assert not outcome.success or outcome.steps == len(actions)  # succeeds on the recorded step
    assert result.metrics()["sim/success/PickCube-v1"] == result.success_rate


@pytest.mark.slow
def test_tiny_policy_rollout_gives_success_metrics_and_a_video(tmp_path):
    from steps.evaluate.export_eval import evaluate_export
    from tests.policy_helpers import make_tiny_export

    _need_maniskill()
    export = make_tiny_export(tmp_path, "pi05_maniskill")
    result = evaluate_export(export, ms_data.DEMO_DATASET, [0], max_samples=2, batch_size=2,
                             out_dir=tmp_path / "out", sim_episodes=1, sim_max_steps=12, sim_workers=1)  # fmt: skip
    m = result.metrics
    assert m["sim/episodes"] == 1.0 and 0.0 <= m["sim/success/PickCube-v1"] <= 1.0
    assert m["sim/category/tabletop"] == m["sim/success_rate"]
    assert result.details["sim_tasks"] == ["PickCube-v1"]  # the dataset's tasks
    gifs = [p for n, p in result.artifacts.items() if n.endswith(".gif")]
    assert len(gifs) == 1 and "PickCube-v1_ep0_seed1000" in gifs[0]
    import imageio.v2 as imageio

    frames = imageio.mimread(gifs[0])
    assert len(frames) >= 6 and frames[0].shape[:2] == (128, 128)  # every 2nd of 12 steps, + the first


@pytest.mark.slow
def test_worker_refuses_methods_that_are_not_remote_and_bad_actions():
    from steps.sim.maniskill.sim import ManiskillSimulator
    from steps.sim.worker import Worker, WorkerError

    _need_maniskill()
    sim = Worker("maniskill", {"resolution": None}, python=ManiskillSimulator.own_python(), name="ms-test")
    try:
        sim.send("call", method="close", kwargs={})
        with pytest.raises(WorkerError, match=r"'close' is not one of the simulator's remote methods"):
            sim.recv()
        sim.send("reset", task="PushCube-v1", episode=0, seed=0)
        obs = sim.recv()["obs"]
        assert obs["state"].shape == (7,) and "images" not in obs
        sim.send("step", action=np.zeros(3), observe=False)
        with pytest.raises(WorkerError, match="expected an action of 7 finite numbers"):
            sim.recv()
    finally:
        sim.close()


def test_what_the_maniskill_venv_imports_of_the_project_is_numpy_only():
    # The worker runs under the ManiSkill venv's numpy 1.26 with only the repository on PYTHONPATH: building
    # the simulator there must not pull in data_adapters / model_zoo (pandas, the main env's torch, ...).
    code = ("import json, sys; from steps.sim.base import simulator_class; import steps.sim.worker; "
            "simulator_class('maniskill'); print(json.dumps(sorted(m for m in sys.modules "
            "if m.startswith(('steps', 'data_adapters', 'model_zoo')))))")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert json.loads(out) == ["steps", "steps.sim", "steps.sim.base", "steps.sim.maniskill",
                               "steps.sim.maniskill.sim", "steps.sim.maniskill.tasks", "steps.sim.wire",
                               "steps.sim.worker"]  # fmt: skip


@pytest.mark.slow
def test_pi05_maniskill_demo_flow_logs_success_metrics_and_a_video_and_registers(tmp_path):
    """`run --config_type pi05_maniskill --demo`: the shipped planned demos train the tiny model, evaluation
    rolls it out in ManiSkill3, MLflow gets sim/success/<task> and the GIFs, a version is registered."""
    from mlflow.tracking import MlflowClient

    from tests.test_flow import flow_env, inspect_run, run_flow

    _need_maniskill()
    result = run_flow(tmp_path, "run", "--config_type", "pi05_maniskill", "--demo", "--max_steps", "8",
                      "--sim_episodes", "1", "--sim_max_steps", "20", env=flow_env(tmp_path))  # fmt: skip
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    info = inspect_run(tmp_path)
    assert info["successful"] and info["run_config"]["data"]["dataset_kind"] == "demo"
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = client.get_run(info["mlflow_run_id"])
    metrics = run.data.metrics
    assert metrics["eval/sim/episodes"] == 1.0 and 0.0 <= metrics["eval/sim/success/PickCube-v1"] <= 1.0
    rollouts = {f.path for f in client.list_artifacts(run.info.run_id, "eval/rollouts")}
    assert any(p.endswith(".gif") for p in rollouts) and "eval/rollouts/episodes.json" in rollouts
    mv = info["model_version"]
    assert mv["name"] == "pi05_maniskill"
    assert str(client.get_registered_model("pi05_maniskill").aliases["candidate"]) == str(mv["version"])
    # The success rate is usable as a promotion gate (dry run: the version's own value passes, above fails).
    from steps.registry.promote import promote

    rate = metrics["eval/sim/success/PickCube-v1"]
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    gate = f"sim/success/PickCube-v1>={rate}"
    assert (
        promote("pi05_maniskill", mv["version"], gates=[gate], dry_run=True, tracking_uri=uri)
        .checks[0]
        .passed
    )
    above = promote("pi05_maniskill", mv["version"], gates=[f"sim/success/PickCube-v1>={rate + 0.5}"],
                    dry_run=True, tracking_uri=uri)  # fmt: skip
    assert not above.checks[0].passed and not above.promoted
