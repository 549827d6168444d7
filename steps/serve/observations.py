"""A robot client's observation -> the policy's raw observation, by the config type's client keys.

The client sends what openpi's examples send, e.g. for LIBERO::

    {"observation/image": uint8 [h, w, 3], "observation/wrist_image": uint8 [h, w, 3],
     "observation/state": float [8], "prompt": str}

The keys come from ``ConfigType.client_observation_keys`` (declared per config type, optional in a
YAML). Images stay uint8 HWC arrays at whatever size the robot has: ``steps.policy.Policy`` resizes
them exactly as training does. Keys the config type does not use are ignored, as openpi does.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np


class ObservationError(ValueError):
    """An observation the policy cannot use; the message names the key and what was expected."""


class ObservationMapper:
    """Checks a client observation and renames it into ``Policy.predict``'s raw format."""

    def __init__(self, config_type) -> None:
        keys = config_type.client_observation_keys
        self.config_type = config_type
        # dataset camera key -> client key, in slot order
        self.image_keys = {camera: keys[camera] for camera in config_type.camera_keys}
        self.state_key = keys["state"]
        self.prompt_key = keys["task"]

    @property
    def expected_keys(self) -> list[str]:
        return [*self.image_keys.values(), self.state_key, self.prompt_key]

    def describe(self) -> dict[str, Any]:
        """The expected keys, for the metadata sent on connect."""
        return {
            "images": list(self.image_keys.values()),
            "state": self.state_key,
            "state_dim": self.config_type.state_dim,
            "prompt": self.prompt_key,
        }

    def __call__(self, obs: Any) -> dict[str, Any]:
        cfg = self.config_type
        if not isinstance(obs, Mapping):
            raise ObservationError(
                f"an observation must be a map with keys {self.expected_keys}, got {type(obs).__name__}"
            )
        missing = [key for key in self.expected_keys if key not in obs]
        if missing:
            got = sorted(str(key) for key in obs)
            raise ObservationError(
                f"observation is missing {', '.join(map(repr, missing))} (config type {cfg.name!r} expects "
                f"{self.expected_keys}; got {got})"
            )
        images = {camera: _image(obs[key], key) for camera, key in self.image_keys.items()}
        return {
            "images": images,
            "state": _state(obs[self.state_key], self.state_key, cfg),
            "task": _prompt(obs[self.prompt_key], self.prompt_key),
        }


def _describe(value: Any) -> str:
    if isinstance(value, np.ndarray):
        return f"{value.dtype} array of shape {list(value.shape)}"
    return type(value).__name__


def _image(value: Any, key: str) -> np.ndarray:
    ok = isinstance(value, np.ndarray) and value.dtype == np.uint8 and value.ndim == 3 and value.shape[2] == 3
    if not ok or 0 in value.shape:
        raise ObservationError(
            f"{key!r} must be a uint8 image array [height, width, 3], got {_describe(value)}"
        )
    return value


def _state(value: Any, key: str, cfg) -> np.ndarray:
    if isinstance(value, list | tuple) and all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in value
    ):
        value = np.asarray(value, dtype=np.float64)
    if not (isinstance(value, np.ndarray) and value.dtype.kind in "iuf"):
        raise ObservationError(
            f"{key!r} must be a number array of shape [{cfg.state_dim}], got {_describe(value)}"
        )
    if value.shape != (cfg.state_dim,):
        raise ObservationError(
            f"{key!r} must have shape [{cfg.state_dim}] (config type {cfg.name!r}), got {list(value.shape)}"
        )
    if not np.isfinite(value).all():
        raise ObservationError(f"{key!r} has non-finite values: {value.tolist()}")
    return value.astype(np.float32)


def _prompt(value: Any, key: str) -> str:
    if isinstance(value, np.ndarray) and value.ndim == 0 and value.dtype.kind == "U":
        value = str(value)
    if not isinstance(value, str):
        raise ObservationError(f"{key!r} must be a string (the task instruction), got {_describe(value)}")
    return value
