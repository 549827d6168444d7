"""Config types, custom YAML config types, dataset validation and dataset inspection."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_adapters import inspect_dataset
from data_adapters.config_types import (
    IMAGE_SLOTS,
    ConfigType,
    TrainPreset,
    require_dataset,
    validate_against_dataset,
)
from data_adapters.registry import get_config_type, list_config_types

EXAMPLE_YAML = Path(__file__).resolve().parents[1] / "data_adapters" / "examples" / "my_robot.yaml"

# openpi's / RLinf's config types: model, horizon, max tokens, action / state dims, dataset, base / wrist camera.
FACTS = {
    "pi0_libero": ("pi0", 50, 48, 7, 8, "physical-intelligence/libero", "image", "wrist_image"),
    "pi05_libero": ("pi05", 10, 200, 7, 8, "physical-intelligence/libero", "image", "wrist_image"),
    "pi0_maniskill": ("pi0", 50, 48, 7, 7, None, "observation.images.top", None),
    "pi05_maniskill": ("pi05", 10, 200, 7, 7, None, "observation.images.top", None),
    "pi05_metaworld": ("pi05", 5, 200, 4, 4, "lerobot/metaworld_mt50", "observation.image", None),
    "pi05_calvin": (
        "pi05",
        5,
        200,
        7,
        7,
        "InternRobotics/InternData-Calvin_ABC",
        "video.image_base",
        "video.image_wrist",
    ),
}


def test_registry_has_exactly_the_design_types():
    assert set(list_config_types()) == set(FACTS)


@pytest.mark.parametrize("name", sorted(FACTS))
def test_builtin_config_type_facts(name):
    model, horizon, max_tokens, action_dim, state_dim, dataset, base, wrist = FACTS[name]
    cfg = get_config_type(name)
    assert (cfg.name, cfg.model_type, cfg.action_horizon, cfg.max_token_len) == (
        name,
        model,
        horizon,
        max_tokens,
    )
    assert (cfg.action_dim, cfg.state_dim, cfg.dataset_id, cfg.dataset_revision) == (
        action_dim,
        state_dim,
        dataset,
        None,
    )
    assert cfg.discrete_state is False
    assert cfg.normalization == ("zscore" if model == "pi0" else "quantile")
    assert tuple(cfg.cameras) == IMAGE_SLOTS
    assert cfg.cameras["base_0_rgb"] == (base,)
    assert cfg.cameras["left_wrist_0_rgb"] == ((wrist,) if wrist else ())
    assert cfg.cameras["right_wrist_0_rgb"] == ()
    assert cfg.simulator == {
        "pi05_metaworld": "metaworld",
        "pi0_libero": "libero",
        "pi05_libero": "libero",
        "pi0_maniskill": "maniskill",
        "pi05_maniskill": "maniskill",
    }.get(name)
    expected_delta = (True,) * 6 + (False,) if name == "pi0_libero" else (False,) * action_dim
    assert cfg.delta_mask == expected_delta
    json.dumps(cfg.to_dict())  # artifacts / MLflow params must be JSON-able


@pytest.mark.parametrize("name", sorted(FACTS))
def test_to_dict_from_dict_round_trip(name):
    cfg = get_config_type(name)
    assert ConfigType.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ValueError, match=r"unknown field 'camera'\. Did you mean 'cameras'"):
        ConfigType.from_dict({**cfg.to_dict(), "camera": {}})


def test_key_mappings():
    libero = get_config_type("pi0_libero")
    assert (libero.state_keys, libero.action_keys) == (("state",), ("actions",))
    metaworld = get_config_type("pi05_metaworld")
    assert (metaworld.state_keys, metaworld.action_keys) == (("observation.state",), ("action",))
    calvin = get_config_type("pi05_calvin")
    assert calvin.state_keys == ("state.ee_pos", "state.ee_rot", "state.gripper")
    assert calvin.action_keys == ("action.delta_ee_pos", "action.delta_ee_rot", "action.gripper")
    assert get_config_type("pi0_maniskill").action_keys == ("actions",)


def test_training_presets():
    default = get_config_type("pi0_libero").train
    assert default == TrainPreset()
    assert (default.peak_lr, default.warmup_steps, default.decay_steps, default.end_lr) == (
        2.5e-5,
        1000,
        30_000,
        2.5e-6,
    )
    assert (default.schedule, default.global_batch, default.ema_decay) == ("cosine", 32, 0.99)
    assert (default.betas, default.eps, default.weight_decay, default.grad_clip) == (
        (0.9, 0.95),
        1e-8,
        1e-10,
        1.0,
    )
    pi05_libero = get_config_type("pi05_libero").train
    assert (pi05_libero.global_batch, pi05_libero.warmup_steps, pi05_libero.peak_lr) == (256, 10_000, 5e-5)
    assert (pi05_libero.schedule, pi05_libero.ema_decay) == ("constant", 0.999)
    for name in ("pi05_metaworld", "pi05_calvin", "pi0_maniskill"):
        assert get_config_type(name).train == TrainPreset()


def test_unknown_name_lists_names_and_suggests():
    with pytest.raises(
        ValueError,
        match=r"unknown config type 'pi05_libro'\. Did you mean 'pi05_libero'\? "
        r"Valid names: pi05_calvin, pi05_libero, .*pi0_maniskill",
    ):
        get_config_type("pi05_libro")


def test_require_dataset():
    assert require_dataset(get_config_type("pi05_metaworld")) == ("lerobot/metaworld_mt50", None)
    assert require_dataset(get_config_type("pi05_metaworld"), "me/mine", "v1") == ("me/mine", "v1")
    assert require_dataset(get_config_type("pi0_maniskill"), "/data/ms") == ("/data/ms", None)
    with pytest.raises(
        ValueError,
        match=r"'pi05_maniskill' has no default dataset.*No public ManiSkill dataset.*"
        r"RLinf/rlt-maniskill-PegInsertionSide-v1-400-succ.*custom YAML",
    ):
        require_dataset(get_config_type("pi05_maniskill"))


def _replace(**changes):
    return dataclasses.replace(get_config_type("pi0_libero"), **changes)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"model_type": "pi1"}, r"model_type must be one of \('pi0', 'pi05'\), got 'pi1'"),
        ({"action_horizon": 0}, r"action_horizon must be a positive integer, got 0"),
        ({"state_dim": 33}, r"state_dim must be an integer in 1\.\.32, got 33"),
        ({"delta_mask": (True,) * 6}, r"delta_mask must be 7 bools"),
        ({"discrete_state": True}, r"discrete_state must be False for pi0"),
        ({"normalization": "minmax"}, r"normalization must be one of .*got 'minmax'"),
        ({"cameras": {"base_rgb": ("image",)}}, r"unknown slot 'base_rgb'.*Did you mean 'base_0_rgb'"),
        ({"cameras": {"base_0_rgb": ("a", "b")}}, r"cameras\['base_0_rgb'\] must be a single dataset key"),
        ({"cameras": {}}, r"cameras must be a mapping with at least one camera key"),
        ({"state_keys": ()}, r"state_keys must be a non-empty list"),
        ({"train": TrainPreset(), "wrist_slots": ("left_wrist",)}, r"wrist_slots must be a list of slots"),
    ],
)
def test_config_type_validation_names_field_and_value(changes, message):
    with pytest.raises(ValueError, match=message):
        _replace(**changes)


def test_delta_dims_need_a_state_dim():
    with pytest.raises(ValueError, match=r"delta_mask must be False at action dims >= state_dim \(4\)"):
        _replace(state_dim=4)


def test_train_preset_validation():
    with pytest.raises(ValueError, match=r"schedule must be one of \('cosine', 'constant'\), got 'linear'"):
        TrainPreset(schedule="linear")
    with pytest.raises(ValueError, match=r"ema_decay must be None or a number in \(0, 1\), got 1.5"):
        TrainPreset(ema_decay=1.5)
    assert TrainPreset(betas=[0.9, 0.99]).betas == (0.9, 0.99)


# --- custom YAML -------------------------------------------------------------------------------


def test_example_yaml_loads_through_get_config_type():
    cfg = get_config_type(str(EXAMPLE_YAML))
    assert cfg.name == "maniskill_peg_insertion"
    assert (cfg.state_dim, cfg.action_dim, cfg.action_horizon) == (9, 8, 10)
    assert cfg.cameras["left_wrist_0_rgb"] == ("wrist_image",)
    assert cfg.dataset_id == "RLinf/rlt-maniskill-PegInsertionSide-v1-400-succ"
    assert cfg.dataset_hint is None


def _write(tmp_path, text, name="robot.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


FULL_YAML = """
dataset: {path: data/robot}
model_type: pi0
action_horizon: 20
cameras: {base_0_rgb: front, left_wrist_0_rgb: [wrist]}
state_keys: [obs.joints, obs.gripper]
action_keys: action
state_dim: 7
action_dim: 7
delta_mask: [true, true, true, true, true, true, false]
train: {peak_lr: 1e-4, global_batch: 64, betas: [0.9, 0.99]}
"""


def test_yaml_without_extends_gets_model_type_defaults(tmp_path):
    cfg = get_config_type(_write(tmp_path, FULL_YAML))
    assert cfg.name == "robot"
    assert (cfg.max_token_len, cfg.normalization, cfg.discrete_state) == (48, "zscore", False)
    assert cfg.dataset_id == str((tmp_path / "data" / "robot").resolve())
    assert cfg.state_keys == ("obs.joints", "obs.gripper") and cfg.action_keys == ("action",)
    assert cfg.cameras["right_wrist_0_rgb"] == ()
    assert cfg.delta_dims == (0, 1, 2, 3, 4, 5)
    assert (cfg.train.peak_lr, cfg.train.global_batch, cfg.train.betas) == (1e-4, 64, (0.9, 0.99))


def test_yaml_extends_overrides_only_given_fields(tmp_path):
    cfg = get_config_type(
        _write(
            tmp_path,
            "extends: pi05_libero\nname: mine\naction_horizon: 16\n"
            "dataset: {id: me/libero_copy, revision: v2}\n",
        )
    )
    base = get_config_type("pi05_libero")
    assert (cfg.name, cfg.action_horizon, cfg.dataset_id, cfg.dataset_revision) == (
        "mine",
        16,
        "me/libero_copy",
        "v2",
    )
    assert (cfg.cameras, cfg.train, cfg.delta_mask) == (base.cameras, base.train, base.delta_mask)
    switched = get_config_type(_write(tmp_path, "extends: pi05_libero\nmodel_type: pi0\n", "sw.yaml"))
    assert (switched.max_token_len, switched.normalization) == (48, "zscore")


def test_yaml_typo_names_field_file_and_suggestion(tmp_path):
    path = _write(tmp_path, FULL_YAML.replace("cameras:", "camreas:"))
    with pytest.raises(ValueError, match=rf"{path}: unknown field 'camreas'\. Did you mean 'cameras'\?"):
        get_config_type(path)
    path = _write(tmp_path, FULL_YAML.replace("global_batch", "global_bach"), "t.yaml")
    with pytest.raises(
        ValueError, match=rf"{path}: train: unknown field 'global_bach'\. Did you mean 'global_batch'"
    ):
        get_config_type(path)
    path = _write(tmp_path, FULL_YAML.replace("{path: data/robot}", "{ids: x}"), "d.yaml")
    with pytest.raises(ValueError, match=rf"{path}: dataset: unknown field 'ids'\. Did you mean 'id'"):
        get_config_type(path)


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        (
            "action_horizon: 20",
            "action_horizon: ten",
            r"action_horizon must be a positive integer, got 'ten'",
        ),
        ("state_dim: 7", "state_dim: 40", r"state_dim must be an integer in 1\.\.32, got 40"),
        ("model_type: pi0", "model_type: pi3", r"model_type must be one of"),
        ("left_wrist_0_rgb: [wrist]", "left_wrist_0_rgb: [wrist, wrist2]", r"must be a single dataset key"),
        (
            "{peak_lr: 1e-4,",
            "{peak_lr: -1,",
            r"train: TrainPreset: peak_lr must be a positive number, got -1",
        ),
        ("state_dim: 7\n", "", r"missing required field\(s\) \['state_dim'\]"),
    ],
)
def test_yaml_bad_values_name_file_and_field(tmp_path, old, new, message):
    assert old in FULL_YAML
    path = _write(tmp_path, FULL_YAML.replace(old, new))
    with pytest.raises(ValueError, match=rf"{path}: .*{message}"):
        get_config_type(path)


def test_yaml_file_errors(tmp_path):
    with pytest.raises(ValueError, match=r"does not exist"):
        get_config_type(str(tmp_path / "nope.yaml"))
    with pytest.raises(
        ValueError, match=r"extends names unknown config type 'pi0_libro'.*Did you mean 'pi0_libero'"
    ):
        get_config_type(_write(tmp_path, "extends: pi0_libro\n"))
    with pytest.raises(ValueError, match=r"name 'pi0_libero' is a built-in config type"):
        get_config_type(_write(tmp_path, "extends: pi0_libero\nname: pi0_libero\n"))


# --- validation against meta/info.json ---------------------------------------------------------


def _info(features: dict) -> dict:
    return {"codebase_version": "v2.1", "fps": 10, "features": features}


LIBERO_INFO = _info(
    {
        "image": {"dtype": "image", "shape": [256, 256, 3]},
        "wrist_image": {"dtype": "image", "shape": [256, 256, 3]},
        "state": {"dtype": "float32", "shape": [8]},
        "actions": {"dtype": "float32", "shape": [7]},
        "timestamp": {"dtype": "float32", "shape": [1]},
    }
)
CALVIN_INFO = _info(
    {
        "video.image_base": {"dtype": "video", "shape": [200, 200, 3]},
        "video.image_wrist": {"dtype": "video", "shape": [84, 84, 3]},
        "state.ee_pos": {"dtype": "float32", "shape": [3]},
        "state.ee_rot": {"dtype": "float32", "shape": [3]},
        "state.gripper": {"dtype": "float32", "shape": [1]},
        "action.delta_ee_pos": {"dtype": "float32", "shape": [3]},
        "action.delta_ee_rot": {"dtype": "float32", "shape": [3]},
        "action.gripper": {"dtype": "float32", "shape": [1]},
    }
)


def test_validate_accepts_matching_datasets():
    validate_against_dataset(get_config_type("pi0_libero"), LIBERO_INFO)
    validate_against_dataset(get_config_type("pi05_libero"), LIBERO_INFO)
    validate_against_dataset(get_config_type("pi05_calvin"), CALVIN_INFO)


def test_validate_missing_key_lists_dataset_keys():
    info = _info({k: v for k, v in LIBERO_INFO["features"].items() if k != "wrist_image"})
    with pytest.raises(
        ValueError,
        match=r"cameras names 'wrist_image', which the dataset does not have\. "
        r"Did you mean 'image'\? Dataset keys: image, state, actions, timestamp",
    ):
        validate_against_dataset(get_config_type("pi0_libero"), info)
    info = _info({**LIBERO_INFO["features"], "action": LIBERO_INFO["features"]["actions"]})
    del info["features"]["actions"]
    with pytest.raises(ValueError, match=r"action_keys names 'actions'.*Did you mean 'action'\?"):
        validate_against_dataset(get_config_type("pi0_libero"), info)


def test_validate_wrong_dims_names_keys_and_dims():
    info = _info({**CALVIN_INFO["features"], "state.gripper": {"dtype": "float32", "shape": [2]}})
    with pytest.raises(
        ValueError,
        match=r"state_keys dims \('state.ee_pos': 3, 'state.ee_rot': 3, "
        r"'state.gripper': 2\) sum to 8, but state_dim is 7",
    ):
        validate_against_dataset(get_config_type("pi05_calvin"), info)
    info = _info({**LIBERO_INFO["features"], "actions": {"dtype": "float32", "shape": [6]}})
    with pytest.raises(ValueError, match=r"action_keys dims \('actions': 6\) sum to 6, but action_dim is 7"):
        validate_against_dataset(get_config_type("pi0_libero"), info)


def test_validate_rejects_non_image_camera():
    info = _info({**LIBERO_INFO["features"], "image": {"dtype": "float32", "shape": [3]}})
    with pytest.raises(ValueError, match=r"camera key 'image' has dtype 'float32'"):
        validate_against_dataset(get_config_type("pi0_libero"), info)


# --- inspect_dataset ---------------------------------------------------------------------------


def _meta_v21(root: Path) -> Path:
    (root / "meta").mkdir(parents=True)
    info = _info(
        {**LIBERO_INFO["features"], "observation.images.wrist_cam": {"dtype": "video", "shape": [64, 64, 3]}}
    )
    info["features"] = {k: v for k, v in info["features"].items() if k != "wrist_image"}
    info.update(total_episodes=2, total_frames=30)
    (root / "meta" / "info.json").write_text(json.dumps(info))
    (root / "meta" / "tasks.jsonl").write_text(
        '{"task_index": 1, "task": "close the drawer"}\n{"task_index": 0, "task": "open the drawer"}\n'
    )
    (root / "meta" / "episodes.jsonl").write_text(
        '{"episode_index": 0, "tasks": ["open the drawer"], "length": 12}\n'
        '{"episode_index": 1, "tasks": ["close the drawer"], "length": 18}\n'
    )
    return root


def _meta_v30(root: Path) -> Path:
    (root / "meta" / "episodes" / "chunk-000").mkdir(parents=True)
    info = {
        "codebase_version": "v3.0",
        "fps": 80,
        "total_episodes": 3,
        "total_frames": 45,
        "features": {
            "observation.image": {"dtype": "image", "shape": [480, 480, 3]},
            "observation.state": {"dtype": "float32", "shape": [4]},
            "observation.environment_state": {"dtype": "float32", "shape": [39]},
            "action": {"dtype": "float32", "shape": [4]},
        },
    }
    (root / "meta" / "info.json").write_text(json.dumps(info))
    pq.write_table(
        pa.table({"task_index": [0, 1], "task": ["Open a drawer", "Press a button"]}),
        root / "meta" / "tasks.parquet",
    )
    pq.write_table(
        pa.table({"episode_index": [0, 1, 2], "length": [10, 15, 20]}),
        root / "meta" / "episodes" / "chunk-000" / "file-000.parquet",
    )
    return root


def test_inspect_v21_prints_summary_and_a_valid_suggestion(tmp_path, capsys):
    root = _meta_v21(tmp_path / "my-set")
    assert inspect_dataset.read_tasks(root) == ["open the drawer", "close the drawer"]
    assert inspect_dataset.main([str(root)]) == 0
    out = capsys.readouterr().out
    assert "version: v2.1  fps: 10" in out and "episode length min 12 / max 18" in out
    assert "wrist_image" not in out and "observation.images.wrist_cam" in out
    assert "# checked against meta/info.json" in out
    suggestion = out.split("# checked against meta/info.json")[1].split("\n", 1)[1]
    path = _write(tmp_path, suggestion, "suggested.yaml")
    cfg = get_config_type(path)
    assert cfg.name == "my_set" and cfg.cameras["left_wrist_0_rgb"] == ("observation.images.wrist_cam",)
    assert (cfg.state_dim, cfg.action_dim) == (8, 7)
    validate_against_dataset(cfg, inspect_dataset.load_info(root))


def test_inspect_v30_reads_parquet_meta(tmp_path, capsys):
    root = _meta_v30(tmp_path / "mt")
    assert inspect_dataset.read_tasks(root) == ["Open a drawer", "Press a button"]
    assert inspect_dataset.read_episode_lengths(root) == [10, 15, 20]
    assert inspect_dataset.main([str(root), "--name", "mw"]) == 0
    out = capsys.readouterr().out
    assert "state_keys: [observation.state]" in out and "action_keys: [action]" in out
    assert "# checked against meta/info.json" in out


def test_inspect_missing_dataset(tmp_path, capsys):
    assert inspect_dataset.main([str(tmp_path)]) == 2
    assert "is not a LeRobot dataset" in capsys.readouterr().err


def test_config_type_is_frozen():
    cfg = get_config_type("pi0_libero")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.action_horizon = 3  # type: ignore[misc]
    with pytest.raises(TypeError):
        cfg.cameras["base_0_rgb"] = ("x",)  # type: ignore[index]
    assert isinstance(cfg, ConfigType)
    assert hash(cfg) == hash(dataclasses.replace(cfg)) and cfg == dataclasses.replace(cfg)
