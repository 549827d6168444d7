"""Meta-World MT50 config type (lerobot/metaworld_mt50: LeRobot v3.0, 80 fps, 480x480 images in parquet).

Schema: `observation.image` (one corner camera), `observation.state` [4] (hand xyz, gripper),
`action` [4] (raw scripted-expert output, not clipped). Closed-loop evaluation runs the simulator.
"""

from __future__ import annotations

from data_adapters.config_types import ConfigType

PI05_METAWORLD = ConfigType(
    name="pi05_metaworld",
    model_type="pi05",
    # RLinf executes chunks of 5 actions in Meta-World.
    action_horizon=5,
    max_token_len=200,
    discrete_state=False,
    cameras={"base_0_rgb": ("observation.image",), "left_wrist_0_rgb": (), "right_wrist_0_rgb": ()},
    state_keys=("observation.state",),
    action_keys=("action",),
    state_dim=4,
    action_dim=4,
    delta_mask=(False,) * 4,
    normalization="quantile",
    dataset_id="lerobot/metaworld_mt50",
    dataset_revision=None,
    simulator="metaworld",
    # openpi has no Meta-World client; its LIBERO names are used for the one camera.
    client_keys={"observation.image": "observation/image", "state": "observation/state", "task": "prompt"},
)

CONFIG_TYPES = (PI05_METAWORLD,)
