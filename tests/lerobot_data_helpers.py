"""Known-content LeRobot datasets for the reader/writer tests (values are functions of episode and frame).

Needs only numpy, so the LeRobot reference tests (other venv) can use it too.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

FPS = 10
LENGTHS = (6, 9, 4)
IMAGE_H, IMAGE_W = 32, 48  # not square, so a height/width swap shows
CAMERAS = ("observation.images.high", "observation.images.wrist")
TASKS = ("pick the cube", "open the drawer", "pick the cube")  # per episode; two distinct


def features(storage: str = "image") -> dict:
    return {
        "observation.state": {"dtype": "float32", "shape": (3,), "names": ["x", "y", "z"]},
        "observation.velocity": {"dtype": "float32", "shape": (2,), "names": None},
        "action": {"dtype": "float32", "shape": (4,), "names": None},
        "done": {"dtype": "bool", "shape": (1,), "names": None},
        **{cam: {"dtype": storage, "shape": (IMAGE_H, IMAGE_W, 3), "names": ["height", "width", "channels"]}
           for cam in CAMERAS},
    }  # fmt: skip


def state(ep: int, t: int) -> np.ndarray:
    return np.array([ep + 0.01 * t, np.sin(0.3 * t + ep), -0.5 * t], dtype=np.float32)


def velocity(ep: int, t: int) -> np.ndarray:
    return np.array([0.1 * ep, 0.2 * t], dtype=np.float32)


def action(ep: int, t: int) -> np.ndarray:
    return np.array([ep, t, ep * 100 + t, np.cos(t)], dtype=np.float32)


def image(ep: int, t: int, cam: int) -> np.ndarray:
    """Smooth gradient plus a moving block: compresses well, differs per episode, frame and camera."""
    y = np.arange(IMAGE_H)[:, None]
    x = np.arange(IMAGE_W)[None, :]
    img = np.empty((IMAGE_H, IMAGE_W, 3), dtype=np.uint8)
    img[..., 0] = (3 * x + 40 * cam) % 256
    img[..., 1] = (4 * y + 20 * ep) % 256
    img[..., 2] = 60 + 10 * t % 120
    top, left = (2 * t) % (IMAGE_H - 8), (3 * t + 5 * ep) % (IMAGE_W - 8)
    img[top : top + 8, left : left + 8] = (230, 230, 30)
    return img


def frame(ep: int, t: int) -> dict:
    values = {
        "observation.state": state(ep, t),
        "observation.velocity": velocity(ep, t),
        "action": action(ep, t),
        "done": np.array([t == LENGTHS[ep] - 1]),
    }
    values.update({cam: image(ep, t, i) for i, cam in enumerate(CAMERAS)})
    return values


def write_dataset(root: Path, *, version: str = "v3.0", storage: str = "image", **writer_kwargs) -> Path:
    """Write the known dataset with our writer; extra kwargs go to LeRobotWriter."""
    from data_adapters.lerobot_writer import LeRobotWriter

    writer = LeRobotWriter(root, fps=FPS, features=features(storage), version=version, **writer_kwargs)
    for ep, length in enumerate(LENGTHS):
        for t in range(length):
            writer.add_frame(frame(ep, t), task=TASKS[ep])
        writer.save_episode()
    return writer.finalize()


def flat_position(ep: int, t: int) -> int:
    return sum(LENGTHS[:ep]) + t


def expected_chunk(ep: int, t: int, horizon: int) -> tuple[np.ndarray, np.ndarray]:
    """Action chunk and pad mask at (ep, t): actions t..t+H-1, the last frame repeated past the end."""
    steps = t + np.arange(horizon)
    pad = steps >= LENGTHS[ep]
    chunk = np.stack([action(ep, min(s, LENGTHS[ep] - 1)) for s in steps])
    return chunk, pad
