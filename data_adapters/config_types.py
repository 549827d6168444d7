"""Config types: what a robot dataset looks like to the model, plus its training preset.

A config type names the model (pi0 / pi0.5), the action horizon, the prompt length, how dataset
keys map onto the model's three camera slots / state / actions, which action dims are deltas,
which normalization to use, the default dataset and the training preset. Built-in types live one
robot per module (`libero.py`, `maniskill.py`, `metaworld.py`, `calvin.py`); custom ones come
from a YAML file (`custom_yaml.py`) and need no code edit.

Looking a config type up by name or YAML path is ``data_adapters.registry.get_config_type``; training
presets are named in ``data_adapters.train_presets``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from data_adapters.train_presets import TrainPreset
from data_adapters.validation import Validated, did_you_mean, is_int

# The model always sees these three camera slots, in this order (openpi / PaliGemma naming).
IMAGE_SLOTS: tuple[str, ...] = ("base_0_rgb", "left_wrist_0_rgb", "right_wrist_0_rgb")
WRIST_SLOTS: tuple[str, ...] = ("left_wrist_0_rgb", "right_wrist_0_rgb")
# State and actions are zero-padded to this many dims before they reach the model.
MODEL_ACTION_DIM = 32
MODEL_TYPES = ("pi0", "pi05")
NORMALIZATIONS = ("zscore", "quantile")
SIMULATORS = ("metaworld", "libero", "maniskill")  # closed-loop simulators (steps.sim.base.SIMULATORS)
# Prompt budget per model type: pi0 sees only the task, pi0.5 may also see 32 state bins.
DEFAULT_MAX_TOKEN_LEN = {"pi0": 48, "pi05": 200}
DEFAULT_NORMALIZATION = {"pi0": "zscore", "pi05": "quantile"}
# Policy inputs besides the cameras that a robot client sends (ConfigType.client_keys).
CLIENT_INPUTS = ("state", "task")
DEFAULT_CLIENT_IMAGE_KEYS = {
    "base_0_rgb": "observation/image",
    "left_wrist_0_rgb": "observation/wrist_image",
    "right_wrist_0_rgb": "observation/right_wrist_image",
}


@dataclass(frozen=True)
class ConfigType(Validated):
    """One robot/dataset layout as the model sees it. Validated on construction."""

    # Registry name, e.g. "pi05_libero".
    name: str
    # "pi0" (continuous state token, z-score) or "pi05" (adaRMS time, quantile).
    model_type: str
    # Actions predicted per inference call (length of each training chunk).
    action_horizon: int
    # Prompt tokens incl. BOS and padding: 48 for pi0, 200 for pi0.5.
    max_token_len: int
    # pi0.5 only: put the normalized state as 256-bin numbers into the prompt.
    discrete_state: bool
    # Model slot -> dataset camera key, as a 1-tuple; () marks a missing camera (-1 image, mask False).
    cameras: Mapping[str, tuple[str, ...]]
    # Dataset keys concatenated in this order into the robot state / action vector.
    state_keys: tuple[str, ...]
    action_keys: tuple[str, ...]
    # Robot dims after concatenation (<= 32; zero-padded to 32 for the model).
    state_dim: int
    action_dim: int
    # One flag per action dim: True -> the chunk is stored relative to the current state dim.
    delta_mask: tuple[bool, ...]
    # "zscore" (pi0) or "quantile" (pi0.5).
    normalization: str
    # Default Hub dataset id (or an absolute local path from a custom YAML); None: the user passes one.
    dataset_id: str | None
    dataset_revision: str | None
    # Slots that get only colour jitter (no crop/rotate) under augmentation.
    wrist_slots: tuple[str, ...] = WRIST_SLOTS
    # Simulator for closed-loop evaluation ("metaworld", "libero", "maniskill") or None.
    simulator: str | None = None
    train: TrainPreset = field(default_factory=TrainPreset)
    # Shown when no dataset is known (e.g. ManiSkill: no public dataset in RLinf's schema).
    dataset_hint: str | None = None
    # Robot-client observation keys (steps/serve, openpi's websocket protocol): each dataset camera
    # key, "state" (the concatenated state vector) and "task" (the prompt) -> the key the client
    # sends. None: derived from the camera slots (see `client_observation_keys`).
    client_keys: Mapping[str, str] | None = None

    def __post_init__(self) -> None:
        if not (isinstance(self.name, str) and self.name.strip()):
            raise ValueError(f"config type: name must be a non-empty string, got {self.name!r}")
        self._need("model_type", self.model_type in MODEL_TYPES, f"one of {MODEL_TYPES}")
        for name in ("action_horizon", "max_token_len"):
            self._need(name, is_int(getattr(self, name)) and getattr(self, name) > 0, "a positive integer")
        self._need("discrete_state", isinstance(self.discrete_state, bool), "a bool")
        pi0_state = self.discrete_state and self.model_type != "pi05"
        self._need("discrete_state", not pi0_state, "False for pi0 (pi0 feeds the state through state_proj)")
        self._check_cameras()
        for name in ("state_keys", "action_keys"):
            self._as_tuple(name)
            keys = getattr(self, name)
            is_keys = (
                isinstance(keys, tuple) and len(keys) > 0 and all(isinstance(k, str) and k for k in keys)
            )
            self._need(name, is_keys, "a non-empty list of dataset keys")
            self._need(name, len(set(keys)) == len(keys), "a list without repeated keys")
        for name in ("state_dim", "action_dim"):
            value = getattr(self, name)
            self._need(
                name, is_int(value) and 0 < value <= MODEL_ACTION_DIM, f"an integer in 1..{MODEL_ACTION_DIM}"
            )
        self._as_tuple("delta_mask")
        mask = self.delta_mask
        mask_ok = (
            isinstance(mask, tuple)
            and len(mask) == self.action_dim
            and all(isinstance(b, bool) for b in mask)
        )
        self._need("delta_mask", mask_ok, f"{self.action_dim} bools (one per action dim)")
        # A delta dim subtracts the state dim with the same index, so that dim must exist.
        beyond = [i for i, b in enumerate(mask) if b and i >= self.state_dim]
        self._need("delta_mask", not beyond, f"False at action dims >= state_dim ({self.state_dim}); dims "
                   f"{beyond} have no state to subtract")  # fmt: skip
        self._need("normalization", self.normalization in NORMALIZATIONS, f"one of {NORMALIZATIONS}")
        for name in ("dataset_id", "dataset_revision", "dataset_hint"):
            value = getattr(self, name)
            self._need(
                name, value is None or (isinstance(value, str) and value != ""), "None or a non-empty string"
            )
        self._as_tuple("wrist_slots")
        wrist_ok = isinstance(self.wrist_slots, tuple) and all(s in IMAGE_SLOTS for s in self.wrist_slots)
        self._need("wrist_slots", wrist_ok, f"a list of slots from {IMAGE_SLOTS}")
        self._need(
            "simulator",
            self.simulator is None or self.simulator in SIMULATORS,
            f"None or one of {SIMULATORS}",
        )
        self._need("train", isinstance(self.train, TrainPreset), "a TrainPreset")
        self._check_client_keys()

    def _check_client_keys(self) -> None:
        if self.client_keys is None:
            return
        inputs = sorted({*self.camera_keys, *CLIENT_INPUTS})
        ok = isinstance(self.client_keys, Mapping) and sorted(self.client_keys) == inputs
        self._need("client_keys", ok, f"a mapping with exactly the keys {inputs}")
        values = list(self.client_keys.values())
        ok = all(isinstance(v, str) and v for v in values) and len(set(values)) == len(values)
        self._need("client_keys", ok, "a mapping to distinct non-empty client keys")
        object.__setattr__(self, "client_keys", MappingProxyType(dict(self.client_keys)))

    @property
    def client_observation_keys(self) -> Mapping[str, str]:
        """``client_keys``, or by default openpi's LIBERO names per camera slot plus state and prompt."""
        if self.client_keys is not None:
            return self.client_keys
        keys = {k: DEFAULT_CLIENT_IMAGE_KEYS[slot] for slot in IMAGE_SLOTS for k in self.cameras[slot]}
        return MappingProxyType({**keys, "state": "observation/state", "task": "prompt"})

    def _check_cameras(self) -> None:
        """Normalize cameras to a read-only {slot: () or (key,)} over all three slots."""
        self._need("cameras", isinstance(self.cameras, Mapping), "a mapping slot -> dataset key")
        for slot in self.cameras:
            if slot not in IMAGE_SLOTS:
                hint = did_you_mean(str(slot), IMAGE_SLOTS)
                raise ValueError(
                    f"{self._owner()}: cameras has unknown slot {slot!r}; slots are {IMAGE_SLOTS}.{hint}"
                )
        out = {}
        for slot in IMAGE_SLOTS:
            keys = self.cameras.get(slot) or ()
            keys = (keys,) if isinstance(keys, str) else tuple(keys)
            if not all(isinstance(k, str) and k for k in keys) or len(keys) > 1:
                raise ValueError(f"{self._owner()}: cameras[{slot!r}] must be a single dataset key (one camera "
                                 f"per slot), got {keys!r}")  # fmt: skip
            out[slot] = keys
        self._need("cameras", any(out.values()), "a mapping with at least one camera key")
        object.__setattr__(self, "cameras", MappingProxyType(out))

    def __hash__(self) -> int:
        # The generated hash would fail on the cameras mapping; equal types share these fields.
        return hash((self.name, self.model_type, self.action_horizon, self.state_keys, self.action_keys))

    @property
    def camera_keys(self) -> tuple[str, ...]:
        """Dataset camera keys the reader must decode, in slot order."""
        return tuple(k for slot in IMAGE_SLOTS for k in self.cameras[slot])

    @property
    def delta_dims(self) -> tuple[int, ...]:
        return tuple(i for i, b in enumerate(self.delta_mask) if b)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ConfigType:
        """Inverse of `to_dict` (e.g. an export's config_type.json); lists become tuples."""
        known = [f.name for f in dataclasses.fields(cls)]
        for key in data:
            if key not in known:
                raise ValueError(
                    f"config type dict has unknown field {key!r}.{did_you_mean(str(key), known)}"
                )
        values = dict(data)
        if isinstance(values.get("train"), Mapping):
            values["train"] = TrainPreset(**values["train"])
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (for flow artifacts and MLflow params)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["cameras"] = {slot: list(keys) for slot, keys in self.cameras.items()}
        out["train"] = dataclasses.asdict(self.train)
        out["client_keys"] = None if self.client_keys is None else dict(self.client_keys)
        return out


def require_dataset(
    cfg: ConfigType, dataset: str | None = None, revision: str | None = None
) -> tuple[str, str | None]:
    """Resolve (dataset id or path, revision): the user's choice, else the config type's default.

    Raises:
        ValueError: neither the user nor the config type names a dataset.
    """
    if dataset:
        return dataset, revision
    if cfg.dataset_id:
        return cfg.dataset_id, revision if revision is not None else cfg.dataset_revision
    hint = f" {cfg.dataset_hint}" if cfg.dataset_hint else ""
    raise ValueError(
        f"config type {cfg.name!r} has no default dataset: pass one (Hub id or local path).{hint}"
    )


def feature_dims(info: Mapping[str, Any], key: str) -> int:
    """Number of values a numeric feature contributes when concatenated (1-D or scalar features)."""
    shape = list(info["features"][key].get("shape") or [])
    if len(shape) > 1:
        raise ValueError(f"feature {key!r} has shape {shape}; only 1-D features can be concatenated")
    return int(shape[0]) if shape else 1


def validate_against_dataset(cfg: ConfigType, info: Mapping[str, Any]) -> None:
    """Check that the dataset (its meta/info.json dict) has every key and dim the config type expects.

    Raises:
        ValueError: a mapped key is missing (the message lists the dataset's keys), a camera key is
            not an image/video feature, or the per-key dims do not sum to state_dim / action_dim.
    """
    features = info.get("features")
    if not isinstance(features, Mapping):
        raise ValueError("dataset info has no 'features' mapping (is this a LeRobot meta/info.json?)")
    where = f"config type {cfg.name!r}"
    wanted = [("cameras", k) for k in cfg.camera_keys]
    wanted += [("state_keys", k) for k in cfg.state_keys] + [("action_keys", k) for k in cfg.action_keys]
    for field_name, key in wanted:
        if key not in features:
            raise ValueError(
                f"{where}: {field_name} names {key!r}, which the dataset does not have."
                f"{did_you_mean(key, list(features))} Dataset keys: {', '.join(features)}"
            )
    for key in cfg.camera_keys:
        dtype = features[key].get("dtype")
        if dtype not in ("image", "video"):
            raise ValueError(f"{where}: camera key {key!r} has dtype {dtype!r}, expected 'image' or 'video'")
    for field_name, keys, dim_name, dim in (
        ("state_keys", cfg.state_keys, "state_dim", cfg.state_dim),
        ("action_keys", cfg.action_keys, "action_dim", cfg.action_dim),
    ):
        for key in keys:
            dtype = features[key].get("dtype")
            if dtype in ("image", "video", "string"):
                raise ValueError(
                    f"{where}: {field_name} names {key!r} of dtype {dtype!r}; expected a number array"
                )
        dims = {key: feature_dims(info, key) for key in keys}
        if sum(dims.values()) != dim:
            parts = ", ".join(f"{k!r}: {d}" for k, d in dims.items())
            raise ValueError(
                f"{where}: {field_name} dims ({parts}) sum to {sum(dims.values())}, but {dim_name} is {dim}"
            )
