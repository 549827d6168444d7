"""LIBERO config types (physical-intelligence/libero: LeRobot v2.0, 10 fps, 256x256 images in parquet).

Schema: `image` (third-person), `wrist_image`, `state` [8] (eef pos 3, axis-angle 3, gripper 2),
`actions` [7] (6 eef deltas + gripper). For a new dataset with a similar robot, copy one of these
and change the keys, dims and dataset id (or write a custom YAML: data_adapters/examples/).
"""

from __future__ import annotations

import dataclasses

from data_adapters import train_presets
from data_adapters.config_types import ConfigType

_CAMERAS = {"base_0_rgb": ("image",), "left_wrist_0_rgb": ("wrist_image",), "right_wrist_0_rgb": ()}
# What openpi's LIBERO example client sends (examples/libero/main.py): images already uint8 HWC.
_CLIENT_KEYS = {
    "image": "observation/image",
    "wrist_image": "observation/wrist_image",
    "state": "observation/state",
    "task": "prompt",
}

PI0_LIBERO = ConfigType(
    name="pi0_libero",
    model_type="pi0",
    action_horizon=50,
    max_token_len=48,
    discrete_state=False,
    cameras=_CAMERAS,
    state_keys=("state",),
    action_keys=("actions",),
    state_dim=8,
    action_dim=7,
    # LIBERO actions are already deltas, but the public pi0 LIBERO checkpoints were trained with an
    # extra delta transform on the 6 arm dims; the gripper (dim 6) stays absolute.
    delta_mask=(True,) * 6 + (False,),
    normalization="zscore",
    dataset_id="physical-intelligence/libero",
    dataset_revision=None,
    client_keys=_CLIENT_KEYS,
    # Closed-loop evaluation in LIBERO itself (steps.sim.libero: openpi's LIBERO conventions).
    simulator="libero",
)

# openpi's own pi05_libero recipe (train_presets.PI05_LIBERO). Robot state stays out of the prompt
# (discrete_state False), as in openpi and RLinf.

PI05_LIBERO = dataclasses.replace(
    PI0_LIBERO,
    name="pi05_libero",
    model_type="pi05",
    action_horizon=10,
    max_token_len=200,
    delta_mask=(False,) * 7,
    normalization="quantile",
    train=train_presets.PI05_LIBERO,
)

CONFIG_TYPES = (PI0_LIBERO, PI05_LIBERO)
