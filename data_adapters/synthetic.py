"""Small deterministic LeRobot datasets in a config type's schema, for tests and benchmarks.

The data are shaped like robot data where it matters to the pipeline:

- state follows a smooth random walk per episode; the action at ``t`` is the next state (an absolute
  position target) plus a little noise, so ``action - state`` is small while the actions themselves are
  not: delta actions and normalization change the numbers visibly.
- each camera shows a per-camera colour gradient, a square whose position follows the first two state
  dims and a stripe that moves with time, so images differ between frames and cameras and compress
  like real footage rather than noise.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from data_adapters.lerobot_writer import LeRobotWriter

DEFAULT_TASKS = (
    "pick up the red block and place it in the bowl",
    "open the top drawer",
    "push the green button",
    "close the lid of the box",
)


def make_synthetic_dataset(
    root: str | Path,
    cfg: Any,
    *,
    num_episodes: int = 4,
    min_len: int = 20,
    max_len: int = 40,
    image_size: int | tuple[int, int] = 64,
    version: str = "v3.0",
    image_storage: str = "image",
    seed: int = 0,
    features: Mapping[str, Any] | None = None,
    fps: int = 10,
    video_codec: str = "av1",
    tasks: Sequence[str] = DEFAULT_TASKS,
) -> Path:
    """Write a synthetic dataset with ``cfg``'s cameras, state keys and action keys to ``root``.

    Args:
        root: folder to create (must not exist).
        cfg: a config type, read only through ``cameras`` (slot -> tuple of dataset keys),
            ``state_keys``, ``action_keys``, ``state_dim``, ``action_dim`` and, if present, ``features``.
        features: per-key sizes ``{key: dim | shape | LeRobot feature dict}`` for numeric keys; overrides
            ``cfg.features``. Keys without a size share the remaining state/action dims evenly.
        image_storage: "image" (PNG in parquet) or "video".
        image_size: camera height and width (one int for square images).
        The other arguments go to :class:`data_adapters.lerobot_writer.LeRobotWriter`.

    Returns:
        ``root`` as a Path.
    """
    if image_storage not in ("image", "video"):
        raise ValueError(
            f"make_synthetic_dataset: image_storage must be 'image' or 'video', got {image_storage!r}"
        )
    if not 1 <= min_len <= max_len:
        raise ValueError(f"make_synthetic_dataset: need 1 <= min_len <= max_len, got {min_len}, {max_len}")
    if num_episodes < 1:
        raise ValueError(f"make_synthetic_dataset: num_episodes must be >= 1, got {num_episodes}")
    height, width = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    spec = dict(getattr(cfg, "features", None) or {})
    spec.update(features or {})
    state_dims = _split_dims(cfg.state_keys, cfg.state_dim, spec, "state")
    action_dims = _split_dims(cfg.action_keys, cfg.action_dim, spec, "action")
    camera_keys = list(dict.fromkeys(k for keys in cfg.cameras.values() for k in keys))

    feature_spec: dict[str, dict] = {}
    for key, dim in {**state_dims, **action_dims}.items():
        feature_spec[key] = {"dtype": "float32", "shape": (dim,), "names": None}
    for key in camera_keys:
        feature_spec[key] = {
            "dtype": image_storage,
            "shape": (height, width, 3),
            "names": ["height", "width", "channels"],
        }
    backgrounds = {key: _background(height, width, i) for i, key in enumerate(camera_keys)}
    state_dim, action_dim = sum(state_dims.values()), sum(action_dims.values())

    writer = LeRobotWriter(root, fps=fps, features=feature_spec, version=version, video_codec=video_codec)
    try:
        for episode in range(num_episodes):
            rng = np.random.default_rng([seed, episode])
            length = int(rng.integers(min_len, max_len + 1))
            state, actions = _trajectory(rng, length, state_dim, action_dim)
            task = tasks[episode % len(tasks)]
            for t in range(length):
                frame = _split(state[t], state_dims) | _split(actions[t], action_dims)
                for key in camera_keys:
                    frame[key] = _draw(backgrounds[key], state[t], t)
                writer.add_frame(frame, task=task)
            writer.save_episode()
        return writer.finalize()
    except BaseException:
        writer.abort()
        raise


def _split_dims(keys: Sequence[str], total: int, spec: Mapping[str, Any], role: str) -> dict[str, int]:
    keys = list(keys)
    if not keys:
        raise ValueError(f"make_synthetic_dataset: config has no {role} keys")
    known = {k: _dim_of(spec[k], k) for k in keys if k in spec}
    free = [k for k in keys if k not in known]
    left = total - sum(known.values())
    if (free and left < len(free)) or (not free and left != 0):
        raise ValueError(
            f"make_synthetic_dataset: {role} dims {known} do not fit {role}_dim={total} "
            f"with keys {keys}; give every key's size in `features`"
        )
    for i, key in enumerate(free):  # the first keys take the remainder
        known[key] = left // len(free) + (1 if i < left % len(free) else 0)
    return {k: known[k] for k in keys}


def _dim_of(value: Any, key: str) -> int:
    if isinstance(value, Mapping):
        value = value.get("shape")
    if isinstance(value, int):
        return value
    shape = list(value or ())
    if len(shape) != 1:
        raise ValueError(f"make_synthetic_dataset: feature {key!r} needs a 1-D size, got {value!r}")
    return int(shape[0])


def _split(vector: np.ndarray, dims: Mapping[str, int]) -> dict[str, np.ndarray]:
    out, start = {}, 0
    for key, dim in dims.items():
        out[key] = vector[start : start + dim]
        start += dim
    return out


def _trajectory(rng: np.random.Generator, length: int, state_dim: int, action_dim: int):
    """Smooth state walk and next-state action targets, float32 ``[T, Ds]`` and ``[T, Da]``."""
    velocity = np.zeros(state_dim)
    state = np.empty((length + 1, state_dim))
    state[0] = rng.uniform(-1.0, 1.0, state_dim)
    for t in range(1, length + 1):
        velocity = 0.8 * velocity + 0.2 * rng.normal(0.0, 0.15, state_dim)
        state[t] = state[t - 1] + velocity
    targets = state[1:, np.arange(action_dim) % state_dim]  # action j follows state dim j mod Ds
    actions = targets + rng.normal(0.0, 0.01, (length, action_dim))
    return state[:length].astype(np.float32), actions.astype(np.float32)


def _background(height: int, width: int, camera: int) -> np.ndarray:
    y = np.linspace(0, 1, height)[:, None]
    x = np.linspace(0, 1, width)[None, :]
    tint = [(0.9, 0.4, 0.2), (0.2, 0.8, 0.5), (0.3, 0.4, 0.9)][camera % 3]
    channels = [tint[0] * x + 0.1 * y, tint[1] * y + 0.1 * x, tint[2] * (1 - 0.5 * (x + y) / 2)]
    return (np.stack([np.broadcast_to(c, (height, width)) for c in channels], axis=-1) * 200).astype(np.uint8)


def _draw(background: np.ndarray, state: np.ndarray, t: int) -> np.ndarray:
    image = background.copy()
    height, width, _ = image.shape
    side = max(2, min(height, width) // 6)
    # The square's position is a function of the state, so images carry information about it.
    cy = int((np.tanh(state[0]) + 1) / 2 * (height - side))
    cx = int((np.tanh(state[min(1, len(state) - 1)]) + 1) / 2 * (width - side))
    image[cy : cy + side, cx : cx + side] = (250, 250, 40)
    row = (3 * t) % height
    image[row : row + 2, :] = 255 - image[row : row + 2, :]
    return image
