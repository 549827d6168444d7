"""Meta-World: mt50 camera, expert demonstrations (read back through our reader, replayed from their
seeds), the metaworld:// source with its cache, and the closed-loop evaluator (expert ~1, random ~0).

Rendering runs on Mesa (MUJOCO_GL=egl or osmesa) at 64² to keep this file around a minute on 2 cores.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from steps.sim.metaworld.env import configure_headless_gl

configure_headless_gl()  # before anything imports mujoco: headless rendering needs EGL or OSMesa
pytest.importorskip("metaworld")

from steps.evaluate import closed_loop as sim_eval  # noqa: E402
from steps.sim.metaworld import demonstrations as metaworld_data  # noqa: E402
from steps.sim.metaworld import tasks as metaworld_tasks  # noqa: E402
from steps.sim.metaworld.env import MetaworldEnv  # noqa: E402

# Task ids, strings and difficulty groups of lerobot/metaworld_mt50 and LeRobot's Meta-World evaluation.
REFERENCE = Path(__file__).resolve().parent / "reference" / "metaworld_tasks.json"
# The scripted expert succeeds on seeds 0..2 of these easy tasks (checked in test_evaluator_expert...).
EASY_TASKS = ("reach-v3", "button-press-v3")
RES = 64


# ---------------------------------------------------------------------------------------------- tasks
def test_task_table_shape_and_reference():
    tasks = metaworld_tasks.TASKS
    assert len(tasks) == 50
    assert sorted(i for i, _ in tasks.values()) == list(range(50))
    sizes = {g: len(ts) for g, ts in metaworld_tasks.DIFFICULTY_TO_TASKS.items()}
    assert sizes == {"easy": 28, "medium": 11, "hard": 6, "very_hard": 5}
    # Two environments share one task string: results must be keyed by environment name.
    assert metaworld_tasks.task_string("push-v3") == metaworld_tasks.task_string("push-back-v3")
    ref = json.loads(REFERENCE.read_text())
    assert {k: v[0] for k, v in tasks.items()} == ref["task_name_to_id"]
    assert {k: v[1] for k, v in tasks.items()} == ref["task_descriptions"]
    assert {g: list(t) for g, t in metaworld_tasks.DIFFICULTY_TO_TASKS.items()} == ref["difficulty_to_tasks"]


def test_unknown_task_names_a_close_match():
    with pytest.raises(ValueError, match="Did you mean 'reach-v3'"):
        metaworld_tasks.check_task_names(["reach-v2"])
    with pytest.raises(ValueError, match="more than once"):
        metaworld_tasks.check_task_names(["reach-v3", "push-v3", "reach-v3"])


# ------------------------------------------------------------------------------------------------ URI
def test_uri_parses_into_spec_and_cache_key():
    spec = metaworld_data.parse_metaworld_uri(
        "metaworld://tasks=reach-v3,button-press-v3&episodes=3&resolution=128&seed=7"
    )
    assert spec.tasks == ("reach-v3", "button-press-v3")
    assert (spec.episodes, spec.resolution, spec.seed, spec.image_storage) == (3, 128, 7, "video")
    same = metaworld_data.MetaworldDataSpec(
        tasks=("reach-v3", "button-press-v3"), episodes=3, resolution=128, seed=7
    )
    assert spec.cache_key() == same.cache_key()
    other = metaworld_data.parse_metaworld_uri(
        "metaworld://tasks=reach-v3,button-press-v3&episodes=4&resolution=128"
    )
    assert other.cache_key() != spec.cache_key()


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("hf://lerobot/metaworld_mt50", "starting with 'metaworld://'"),
        ("metaworld://episodes=3", "missing tasks"),
        ("metaworld://tasks=reach-v3&epsiodes=3", "cannot read 'epsiodes=3'"),
        ("metaworld://tasks=reach-v3&episodes=three", "episodes must be an integer"),
        ("metaworld://tasks=reach-v3&resolution=8", "resolution: expected 16..2048"),
        ("metaworld://tasks=rech-v3", "Did you mean 'reach-v3'"),
        ("metaworld://tasks=reach-v3&image_storage=gif", "image_storage"),
    ],
)
def test_bad_uri_is_refused_naming_the_field(uri, message):
    with pytest.raises(ValueError, match=message):
        metaworld_data.parse_metaworld_uri(uri)


# --------------------------------------------------------------------------------------------- camera
def test_reset_is_seeded_and_camera_is_corner4_rotated_180():
    import mujoco

    with MetaworldEnv("button-press-v3", resolution=RES) as env:
        first = env.reset(3)
        assert first.shape == (39,)
        assert not np.array_equal(env.reset(4), first)
        np.testing.assert_array_equal(env.reset(3), first)
        image = env.render()
        assert image.shape == (RES, RES, 3) and image.dtype == np.uint8
        assert image.std() > 10  # a scene, not a blank buffer
        # Same frame straight from MuJoCo's corner4 camera is upside down: both axes flipped.
        raw = mujoco.Renderer(env._env.model, RES, RES)
        raw.update_scene(env._env.data, camera="corner4")
        np.testing.assert_array_equal(image, raw.render()[::-1, ::-1])
        raw.close()
        assert env._env.model.vis.quality.shadowsize == 1024
        np.testing.assert_allclose(env._env.model.cam_pos[4], [0.75, 0.075, 0.7])


def test_rendering_before_triton_import_does_not_crash():
    """Mesa's libLLVM and triton's clash (segfault) unless triton is imported first; MetaworldEnv does that."""
    import importlib.util
    import subprocess
    import sys

    if importlib.util.find_spec("triton") is None:
        pytest.skip("triton is not installed")
    script = (
        "from steps.sim.metaworld.env import MetaworldEnv\n"
        f"env = MetaworldEnv('reach-v3', resolution={RES}); env.reset(0); env.render()\n"
        "import triton  # what torch does lazily, e.g. when building a model under a device context\n"
        "env.render(); print('ok')\n"
    )
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=root, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-2000:]


def test_env_refuses_bad_actions_and_seeds():
    with MetaworldEnv("reach-v3", resolution=None) as env:
        with pytest.raises(RuntimeError, match="reset"):
            env.step(np.zeros(4))
        with pytest.raises(ValueError, match="seed"):
            env.reset(-1)
        env.reset(0)
        with pytest.raises(ValueError, match="action"):
            env.step(np.zeros(3))
        with pytest.raises(RuntimeError, match="resolution=None"):
            env.render()


# -------------------------------------------------------------------------------------------- dataset
@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """2 tasks x 1 episode at 64², AV1, through the cached metaworld:// source (~100 rendered frames)."""
    cache = tmp_path_factory.mktemp("mw_cache")
    uri = f"metaworld://tasks={','.join(EASY_TASKS)}&episodes=1&resolution={RES}"
    root = metaworld_data.fetch_metaworld(uri, cache)
    return uri, cache, root


def test_generated_dataset_has_mt50_schema(generated):
    from data_adapters.lerobot_format import read_meta

    _, _, root = generated
    meta = read_meta(root)
    assert meta.version == "v3.0" and meta.fps == 80
    features = meta.features
    expected = {
        "observation.image": (RES, RES, 3),
        "observation.state": (4,),
        "observation.environment_state": (39,),
        "action": (4,),
        "next.reward": (1,),
        "next.success": (1,),
        "task_id": (1,),
    }
    for key, shape in expected.items():
        assert tuple(features[key]["shape"]) == shape, key
    assert features["observation.image"]["dtype"] == "video"
    assert features["next.success"]["dtype"] == "bool" and features["task_id"]["dtype"] == "int64"
    assert len(meta.episodes) == 2
    assert set(meta.tasks.values() if isinstance(meta.tasks, dict) else meta.tasks) == {
        metaworld_tasks.task_string(t) for t in EASY_TASKS
    }


def test_generated_frames_read_back_through_our_reader(generated):
    from data_adapters.lerobot_reader import LeRobotFrames, read_numeric

    _, _, root = generated
    gen = metaworld_data.read_generation_meta(root)
    numeric = read_numeric(
        root, ["observation.state", "observation.environment_state", "next.success", "task_id"]
    )
    for ep in gen["episodes"]:
        values = numeric[ep["episode_index"]]
        assert len(values) == ep["length"]
        np.testing.assert_array_equal(values[:, :4], values[:, 4:8])  # state = first 4 obs dims
        success = values[:, 43].astype(bool)
        assert success[-1] and not success[:-1].any()  # stops at the first success
        assert (values[:, 44] == metaworld_tasks.task_id(ep["env_name"])).all()
    frames = LeRobotFrames(
        root,
        state_keys=("observation.state",),
        action_keys=("action",),
        camera_keys=("observation.image",),
        horizon=5,
    )
    item = frames[0]
    image = item["images"]["observation.image"]
    assert image.shape == (RES, RES, 3) and image.dtype == np.uint8 and image.std() > 10
    assert item["task"] == metaworld_tasks.task_string(gen["episodes"][item["episode_index"]]["env_name"])
    # The decoded first frame is close to a fresh render of the episode's start (AV1 is lossy).
    first = gen["episodes"][item["episode_index"]]
    with MetaworldEnv(first["env_name"], resolution=RES) as env:
        env.reset(first["seed"])
        assert np.abs(env.render().astype(float) - image.astype(float)).mean() < 12


def test_replaying_stored_actions_from_stored_seeds_reproduces_successes(generated):
    from data_adapters.lerobot_reader import read_numeric

    _, _, root = generated
    gen = metaworld_data.read_generation_meta(root)
    data = read_numeric(root, ["action", "observation.environment_state"])
    for ep in gen["episodes"]:
        actions, env_state = data[ep["episode_index"]][:, :4], data[ep["episode_index"]][:, 4:]
        seen = []
        with MetaworldEnv(ep["env_name"], resolution=None) as env:
            successes = metaworld_data.replay_episode(
                env,
                ep["seed"],
                actions,
                on_frame=lambda obs, *_, seen=seen: seen.append(obs.astype(np.float32)),
            )
        assert successes[-1] and not any(successes[:-1]), ep
        np.testing.assert_allclose(np.stack(seen), env_state, atol=1e-6)


def test_fetch_reuses_the_cache(generated):
    uri, cache, root = generated
    logs = []
    again = metaworld_data.fetch_metaworld(uri, cache, log=logs.append)
    assert again == root and any("cached" in line for line in logs)
    assert not list(Path(cache).glob(".staging-*"))  # nothing left half-written


def test_generate_refuses_a_non_empty_output(tmp_path):
    (tmp_path / "x").write_text("keep")
    spec = metaworld_data.MetaworldDataSpec(tasks=("reach-v3",), episodes=1, resolution=RES)
    with pytest.raises(FileExistsError, match="not empty"):
        metaworld_data.generate_demonstrations(spec, tmp_path)


def test_failed_expert_episodes_are_dropped_or_kept_on_request(tmp_path):
    # 10 steps are too few for the expert: every seed fails.
    with pytest.raises(RuntimeError, match="succeeded on only 0 of 6 seeds"):
        metaworld_data.generate_demonstrations(
            metaworld_data.MetaworldDataSpec(tasks=("reach-v3",), episodes=1, resolution=RES, max_steps=10),
            tmp_path / "dropped",
            log=lambda *_: None,
        )
    assert list(tmp_path.iterdir()) == []  # the writer's temporary folder is gone too
    out = tmp_path / "kept"
    metaworld_data.main(
        ["--tasks", "reach-v3", "--episodes", "1", "--resolution", str(RES), "--max-steps", "10"]
        + ["--keep-failed", "--image-storage", "image", "--seed", "5", "--out", str(out)]
    )
    from data_adapters.lerobot_format import read_meta
    from data_adapters.lerobot_reader import read_numeric

    assert read_meta(out).features["observation.image"]["dtype"] == "image"
    (success,) = read_numeric(out, ["next.success"]).values()
    assert success.shape == (10, 1) and not success.any()
    assert metaworld_data.read_generation_meta(out)["episodes"] == [
        {"episode_index": 0, "env_name": "reach-v3", "seed": 5, "length": 10, "success": False}
    ]


def test_shipped_demo_dataset_matches_pi05_metaworld_and_replays():
    """The committed demo data reads back, fits pi05_metaworld, and still replays to success (physics only)."""
    from data_adapters.config_types import validate_against_dataset
    from data_adapters.lerobot_format import read_meta
    from data_adapters.lerobot_reader import read_numeric
    from data_adapters.registry import get_config_type

    root = metaworld_data.DEMO_DATASET
    meta = read_meta(root)
    validate_against_dataset(get_config_type("pi05_metaworld"), meta.info)
    gen = metaworld_data.read_generation_meta(root)
    assert len(meta.episodes) == len(gen["episodes"]) and meta.fps == 80
    actions = read_numeric(root, ["action"])
    first_per_task = {ep["env_name"]: ep for ep in reversed(gen["episodes"])}
    for ep in first_per_task.values():
        with MetaworldEnv(ep["env_name"], resolution=None) as env:
            successes = metaworld_data.replay_episode(env, ep["seed"], actions[ep["episode_index"]])
        assert successes[-1] and not any(successes[:-1]), ep


# ------------------------------------------------------------------------------------------ evaluator
def test_evaluator_expert_scores_one_and_random_about_zero(tmp_path):
    common = dict(
        tasks=EASY_TASKS, episodes_per_task=3, seeds=0, max_steps=150, replan_every=5, resolution=RES
    )
    expert = sim_eval.evaluate_metaworld(
        sim_eval.ScriptedExpertPolicy(), out_dir=tmp_path, record_episodes=2, log=None, **common
    )
    assert expert.success_rate == 1.0
    assert expert.per_task == {"reach-v3": 1.0, "button-press-v3": 1.0}
    assert expert.per_group == {"easy": 1.0} and expert.group_kind == "difficulty"
    assert [o.seed for o in expert.episodes] == [0, 1, 2, 0, 1, 2]
    assert expert.metrics()["sim/success/button-press-v3"] == 1.0
    strip, *gifs = (Path(p) for p in expert.media)
    assert strip.name == "rollout_strip.png" and strip.is_file() and len(gifs) == 2
    assert all(g.suffix == ".gif" and g.stat().st_size > 0 for g in gifs)

    random = sim_eval.evaluate_metaworld(sim_eval.RandomPolicy(horizon=5, seed=0), log=None, **common)
    assert random.success_rate <= 1 / 6
    assert all(o.steps == 150 for o in random.episodes if not o.success)


def test_evaluator_runs_the_inference_policy(tmp_path):
    """The registered-model path: steps.policy.Policy.predict (tiny pi05_metaworld) as policy_fn."""
    import torch

    from steps.policy import Policy
    from tests.policy_helpers import make_tiny_export

    torch.set_num_threads(1)
    policy = Policy.from_export(make_tiny_export(tmp_path, "pi05_metaworld"), device="cpu")
    horizon = policy.config_type.action_horizon
    result = sim_eval.evaluate_metaworld(
        policy.predict,
        ["reach-v3"],
        1,
        seeds=[0],
        max_steps=2 * horizon,
        replan_every=horizon,
        resolution=RES,
        log=None,
    )
    assert result.episodes[0].steps == 2 * horizon or result.episodes[0].success
    assert set(result.per_task) == {"reach-v3"}


class _CountingPolicy:
    """Zero actions in chunks of 5; counts queries and checks the observation layout."""

    def __init__(self, uses_images: bool):
        self.uses_images = uses_images
        self.calls = 0
        self.resets = 0

    def reset(self):
        self.resets += 1

    def __call__(self, obs):
        self.calls += 1
        assert obs["state"].shape == (4,) and obs["state"].dtype == np.float32
        assert obs["task"] == "Reach a goal position"
        if self.uses_images:
            assert obs["images"]["observation.image"].shape == (RES, RES, 3)
        else:
            assert obs["images"] == {}
        return np.zeros((5, 4), np.float32)


@pytest.mark.parametrize(("replan_every", "calls"), [(2, 5), (None, 2), (5, 2)])
def test_evaluator_executes_chunks_and_replans(replan_every, calls):
    policy = _CountingPolicy(uses_images=replan_every == 2)
    result = sim_eval.evaluate_metaworld(
        policy, ["reach-v3"], 1, seeds=[0], max_steps=10, replan_every=replan_every, resolution=RES, log=None
    )
    assert (policy.calls, policy.resets) == (calls, 1)
    assert result.episodes[0].steps == 10 and not result.episodes[0].success


def test_evaluator_refuses_bad_inputs():
    with pytest.raises(ValueError, match="expected 2 seeds"):
        sim_eval.evaluate_metaworld(sim_eval.RandomPolicy(), ["reach-v3"], 2, seeds=[0], log=None)
    with pytest.raises(ValueError, match="policy_fn: expected actions of shape"):
        sim_eval.evaluate_metaworld(
            lambda obs: np.zeros((2, 3)), ["reach-v3"], 1, seeds=0, max_steps=5, resolution=RES, log=None
        )
