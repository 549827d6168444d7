"""ManiSkill config types, in the schema RLinf's SFT recipe expects.

No public dataset has this schema: RLinf expects a locally converted dataset (its placeholder id
physical-intelligence/maniskill does not exist), so `dataset_id` is None and the user passes one, or
generates one: `--dataset maniskill://tasks=PickCube-v1&episodes=50` (motion-planned demonstrations,
steps.sim.maniskill.demonstrations, whose docstring gives each state and action dim's meaning).
Public RLinf ManiSkill sets use another schema and go through a custom YAML instead.

Closed-loop evaluation runs ManiSkill3 (`simulator: maniskill`) in the dataset's control mode
(pd_ee_delta_pose), on the dataset's tasks (else PickCube-v1).
"""

from __future__ import annotations

import dataclasses

from data_adapters.config_types import ConfigType

MANISKILL_DATASET_HINT = (
    "No public ManiSkill dataset exists in RLinf's schema (observation.images.top, observation.state[7], "
    "actions[7]); generate one with --dataset 'maniskill://tasks=PickCube-v1&episodes=50' (motion-planned "
    "demonstrations) or convert your own and pass it. Public RLinf ManiSkill sets such as "
    "RLinf/rlt-maniskill-PegInsertionSide-v1-400-succ (image, wrist_image, state[9], actions[8]) have "
    "another schema: use a custom YAML config type instead (see data_adapters/examples/my_robot.yaml "
    "and `python -m data_adapters.inspect_dataset PATH`)."
)

PI0_MANISKILL = ConfigType(
    name="pi0_maniskill",
    model_type="pi0",
    action_horizon=50,
    max_token_len=48,
    discrete_state=False,
    cameras={"base_0_rgb": ("observation.images.top",), "left_wrist_0_rgb": (), "right_wrist_0_rgb": ()},
    state_keys=("observation.state",),
    action_keys=("actions",),
    state_dim=7,
    action_dim=7,
    delta_mask=(False,) * 7,
    normalization="zscore",
    dataset_id=None,
    dataset_revision=None,
    dataset_hint=MANISKILL_DATASET_HINT,
    client_keys={
        "observation.images.top": "observation/image",
        "state": "observation/state",
        "task": "prompt",
    },
    simulator="maniskill",
)

PI05_MANISKILL = dataclasses.replace(
    PI0_MANISKILL,
    name="pi05_maniskill",
    model_type="pi05",
    action_horizon=10,
    max_token_len=200,
    normalization="quantile",
)

CONFIG_TYPES = (PI0_MANISKILL, PI05_MANISKILL)
