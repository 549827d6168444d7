"""CALVIN config type (InternRobotics/InternData-Calvin_ABC: LeRobot v2.x layout, videos).

State and actions are split over several keys in this dataset and are concatenated in the order
given: state = ee_pos (3) + ee_rot (3) + gripper (1); actions = delta_ee_pos (3) + delta_ee_rot (3)
+ gripper (1). The actions are already deltas, so no delta transform is applied.
"""

from __future__ import annotations

from data_adapters.config_types import ConfigType

PI05_CALVIN = ConfigType(
    name="pi05_calvin",
    model_type="pi05",
    action_horizon=5,
    max_token_len=200,
    discrete_state=False,
    cameras={
        "base_0_rgb": ("video.image_base",),
        "left_wrist_0_rgb": ("video.image_wrist",),
        "right_wrist_0_rgb": (),
    },
    state_keys=("state.ee_pos", "state.ee_rot", "state.gripper"),
    action_keys=("action.delta_ee_pos", "action.delta_ee_rot", "action.gripper"),
    state_dim=7,
    action_dim=7,
    delta_mask=(False,) * 7,
    normalization="quantile",
    dataset_id="InternRobotics/InternData-Calvin_ABC",
    dataset_revision=None,
    # The client sends the state already concatenated (ee_pos, ee_rot, gripper: 7 values).
    client_keys={
        "video.image_base": "observation/image",
        "video.image_wrist": "observation/wrist_image",
        "state": "observation/state",
        "task": "prompt",
    },
)

CONFIG_TYPES = (PI05_CALVIN,)
