"""Cross-checks against LeRobot itself (runs only in a LeRobot reference venv, skipped elsewhere).

(a) datasets LeRobot writes (image and video cameras) read by our reader give LeRobot's own items:
    state, action chunks (delta_timestamps = k / fps for k < H), pad masks, task and pixels;
(b) LeRobot reads what our v3.0 writer writes (image and video) with identical values.

The same file runs against whichever release the venv holds: LeRobot 0.6.1 (Python 3.12,
``~/.cache/vla-sft/lerobot061-venv``) and 0.4.4 (``~/.cache/vla-sft/lerobot-venv``). The API used here
(``LeRobotDataset.create / add_frame / save_episode / finalize``, ``video_backend="pyav"``, ``meta``)
is the same in both. Run (see .ci/run)::

    ~/.cache/vla-sft/lerobot061-venv/bin/pip install --no-deps -e .
    ~/.cache/vla-sft/lerobot061-venv/bin/python -m pytest -m lerobot_ref -p no:cacheprovider tests/test_lerobot_reference.py
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from data_adapters.lerobot_format import read_meta
from data_adapters.lerobot_reader import LeRobotFrames
from tests import lerobot_data_helpers as h

pytestmark = pytest.mark.lerobot_ref

HORIZON = 5  # longer than the last episode (4 frames)
DELTA = {"action": [k / h.FPS for k in range(HORIZON)]}


def lerobot_dataset_class():
    pytest.importorskip("lerobot", reason="LeRobot lives in its own venv (pytest -m lerobot_ref there)")
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    return LeRobotDataset


def write_with_lerobot(root, storage: str):
    """The known dataset, written by LeRobot (create -> add_frame -> save_episode -> finalize)."""
    dataset_class = lerobot_dataset_class()
    dataset = dataset_class.create(
        "local/reference", fps=h.FPS, features=h.features(storage), root=root,
        use_videos=storage == "video", video_backend="pyav",
    )  # fmt: skip
    for ep, length in enumerate(h.LENGTHS):
        for t in range(length):
            dataset.add_frame({**h.frame(ep, t), "task": h.TASKS[ep]})
        dataset.save_episode()
    dataset.finalize()
    return root


def open_with_lerobot(root):
    return lerobot_dataset_class()("local/reference", root=root, video_backend="pyav", delta_timestamps=DELTA)


def ours(root, tmp_path):
    return LeRobotFrames(
        root,
        state_keys=["observation.state"],
        action_keys=["action"],
        camera_keys=list(h.CAMERAS),
        horizon=HORIZON,
        cache_dir=tmp_path / "cache",
    )


def to_uint8_hwc(image: torch.Tensor) -> np.ndarray:
    """LeRobot's float CHW image in [0, 1] back to the uint8 HWC it came from (exact: k / 255 round-trips)."""
    return (image.permute(1, 2, 0).numpy() * 255.0).round().astype(np.uint8)


def assert_items_match(theirs, mine, storage: str):
    assert len(theirs) == len(mine) == sum(h.LENGTHS)
    for i in range(len(mine)):
        a, b = theirs[i], mine[i]
        np.testing.assert_array_equal(a["observation.state"].numpy(), b["state"])
        np.testing.assert_array_equal(a["action"].numpy(), b["actions"])
        np.testing.assert_array_equal(a["action_is_pad"].numpy(), b["action_is_pad"])
        assert a["task"] == b["task"]
        assert (int(a["episode_index"]), int(a["frame_index"]), int(a["index"])) == (
            b["episode_index"],
            b["frame_index"],
            b["index"],
        )
        for cam in h.CAMERAS:
            # Same PyAV/FFmpeg decoder and colour conversion in this venv: video pixels are identical too.
            np.testing.assert_array_equal(
                to_uint8_hwc(a[cam]), b["images"][cam], err_msg=f"{storage} {cam} item {i}"
            )
    # And both equal the ground truth we wrote (exactly for numbers and PNG images).
    for ep, length in enumerate(h.LENGTHS):
        for t in range(length):
            item = mine[h.flat_position(ep, t)]
            chunk, pad = h.expected_chunk(ep, t, HORIZON)
            np.testing.assert_array_equal(item["actions"], chunk)
            np.testing.assert_array_equal(item["action_is_pad"], pad)
            np.testing.assert_array_equal(item["state"], h.state(ep, t))
            if storage == "image":
                np.testing.assert_array_equal(item["images"][h.CAMERAS[1]], h.image(ep, t, 1))
            else:
                assert np.abs(item["images"][h.CAMERAS[1]].astype(float) - h.image(ep, t, 1)).mean() < 6


@pytest.mark.parametrize("storage", ["image", "video"])
def test_our_reader_on_datasets_lerobot_wrote(tmp_path, storage):
    root = write_with_lerobot(tmp_path / "lerobot_written", storage)
    meta = read_meta(root)
    assert meta.version == "v3.0" and [ep.length for ep in meta.episodes.values()] == list(h.LENGTHS)
    assert_items_match(open_with_lerobot(root), ours(root, tmp_path), storage)


@pytest.mark.parametrize("storage", ["image", "video"])
def test_lerobot_reads_what_our_writer_wrote(tmp_path, storage):
    root = h.write_dataset(tmp_path / "ours_written", version="v3.0", storage=storage)
    theirs = open_with_lerobot(root)
    assert theirs.meta.total_episodes == len(h.LENGTHS) and theirs.meta.total_frames == sum(h.LENGTHS)
    assert list(theirs.meta.tasks.index) == [h.TASKS[0], h.TASKS[1]]
    assert theirs.meta.camera_keys == list(h.CAMERAS)
    assert set(theirs.meta.stats) >= {"observation.state", "action", *h.CAMERAS}
    assert_items_match(theirs, ours(root, tmp_path), storage)
