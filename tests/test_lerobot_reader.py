"""Reading LeRobot datasets: meta of every layout, items and action chunks, workers, splits, errors."""

from __future__ import annotations

import json
import pickle
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from data_adapters.lerobot_format import DatasetFormatError, fingerprint, read_meta, split_episodes
from data_adapters.lerobot_reader import LeRobotFrames, loader_worker_init, read_numeric
from data_adapters.lerobot_writer import LeRobotWriter
from tests import lerobot_data_helpers as h

HORIZON = 5  # longer than episode 2 (4 frames): every item of it has padding


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    base = tmp_path_factory.mktemp("lerobot")
    return {
        (version, storage): h.write_dataset(base / f"{version}_{storage}", version=version, storage=storage)
        for version, storage in [("v3.0", "image"), ("v3.0", "video"), ("v2.1", "video"), ("v2.0", "image")]
    }


def make_frames(root, tmp_path, **kw):
    kw.setdefault("camera_keys", list(h.CAMERAS))
    return LeRobotFrames(
        root,
        state_keys=["observation.state", "observation.velocity"],
        action_keys=["action"],
        horizon=kw.pop("horizon", HORIZON),
        cache_dir=tmp_path / "cache",
        **kw,
    )


@pytest.mark.parametrize("key", [("v3.0", "image"), ("v3.0", "video"), ("v2.1", "video"), ("v2.0", "image")])
def test_read_meta_all_layouts(datasets, key):
    meta = read_meta(datasets[key])
    assert meta.version == key[0] and meta.fps == h.FPS
    assert [ep.length for ep in meta.episodes.values()] == list(h.LENGTHS)
    assert meta.total_frames == sum(h.LENGTHS)
    assert meta.tasks == {0: h.TASKS[0], 1: h.TASKS[1]}
    assert meta.episodes[1].tasks == (h.TASKS[1],)
    assert meta.camera_keys == list(h.CAMERAS)
    assert [ep.dataset_from_index for ep in meta.episodes.values()] == [0, 6, 15]
    if key[0] == "v3.0":
        assert [ep.row_start for ep in meta.episodes.values()] == [0, 6, 15]
        assert {ep.data_path for ep in meta.episodes.values()} == {"data/chunk-000/file-000.parquet"}
    else:
        assert meta.episodes[2].data_path == "data/chunk-000/episode_000002.parquet"
        assert meta.episodes[2].row_start == 0
    if key[1] == "video":
        span = meta.episodes[1].videos[h.CAMERAS[1]]
        offset = 0.6 if key[0] == "v3.0" else 0.0  # v3.0 concatenates episodes in one file
        assert (span.from_timestamp, span.to_timestamp) == pytest.approx((offset, offset + 0.9))
        assert meta.video_keys == list(h.CAMERAS)


@pytest.mark.parametrize("key", [("v3.0", "image"), ("v2.1", "video"), ("v2.0", "image")])
def test_items_states_action_chunks_and_padding(datasets, key, tmp_path):
    frames = make_frames(datasets[key], tmp_path)
    assert len(frames) == sum(h.LENGTHS)
    for ep, length in enumerate(h.LENGTHS):
        for t in range(length):
            item = frames[h.flat_position(ep, t)]
            chunk, pad = h.expected_chunk(ep, t, HORIZON)
            np.testing.assert_array_equal(item["state"], np.concatenate([h.state(ep, t), h.velocity(ep, t)]))
            np.testing.assert_array_equal(item["actions"], chunk)
            np.testing.assert_array_equal(item["action_is_pad"], pad)
            assert item["state"].dtype == np.float32 and item["actions"].dtype == np.float32
            assert item["action_is_pad"].dtype == bool
            assert (item["episode_index"], item["frame_index"], item["index"]) == (
                ep,
                t,
                h.flat_position(ep, t),
            )
            assert item["task"] == h.TASKS[ep]
    last = frames[-1]  # last frame of the last episode: only the first action is real
    assert last["action_is_pad"].tolist() == [False] + [True] * (HORIZON - 1)
    assert (last["actions"] == h.action(2, 3)).all()


def test_items_only_decode_current_images(datasets, tmp_path):
    frames = make_frames(datasets[("v3.0", "image")], tmp_path)
    item = frames[h.flat_position(1, 7)]
    assert set(item["images"]) == set(h.CAMERAS)
    for i, cam in enumerate(h.CAMERAS):
        np.testing.assert_array_equal(item["images"][cam], h.image(1, 7, i))
    item["images"][h.CAMERAS[0]][:] = 0  # returned arrays are the caller's to modify
    np.testing.assert_array_equal(frames[h.flat_position(1, 7)]["images"][h.CAMERAS[0]], h.image(1, 7, 0))


def test_video_items_are_close_to_written_frames(datasets, tmp_path):
    frames = make_frames(datasets[("v3.0", "video")], tmp_path)
    rng = np.random.default_rng(0)
    for flat in rng.permutation(len(frames))[:10]:  # random order: seeks back and forth
        item = frames[int(flat)]
        ep, t = item["episode_index"], item["frame_index"]
        for i, cam in enumerate(h.CAMERAS):
            assert np.abs(item["images"][cam].astype(float) - h.image(ep, t, i)).mean() < 6


def test_episode_subset_and_no_cameras(datasets, tmp_path):
    frames = make_frames(datasets[("v3.0", "video")], tmp_path, episodes=[2, 0], camera_keys=[])
    assert len(frames) == h.LENGTHS[0] + h.LENGTHS[2]
    assert [frames[i]["episode_index"] for i in (0, 5, 6, 9)] == [0, 0, 2, 2]
    assert frames[6]["images"] == {} and frames[6]["index"] == h.flat_position(2, 0)
    assert frames.episode_lengths == {0: 6, 2: 4}
    with pytest.raises(IndexError):
        frames[len(frames)]
    assert frames[-1]["frame_index"] == 3
    with pytest.raises(DatasetFormatError, match=r"episodes \[7\] are not in dataset .* indices 0\.\.2"):
        make_frames(datasets[("v3.0", "video")], tmp_path, episodes=[0, 7])


def test_read_numeric_concatenates_keys_in_order(datasets):
    for key in [("v3.0", "image"), ("v2.1", "video")]:
        values = read_numeric(datasets[key], ["action", "done", "observation.velocity"], episodes=[1])
        assert list(values) == [1]
        want = [np.concatenate([h.action(1, t), [t == 8], h.velocity(1, t)]) for t in range(9)]
        np.testing.assert_array_equal(values[1], np.array(want, dtype=np.float32))
        assert values[1].dtype == np.float64


@pytest.mark.parametrize("key", [("v3.0", "image"), ("v3.0", "video")])
def test_dataloader_workers_match_direct_reads(datasets, key, tmp_path):
    torch.set_num_threads(1)
    frames = make_frames(datasets[key], tmp_path, horizon=3)
    direct = [frames[i] for i in range(len(frames))]  # also opens files in the parent before the fork
    loader = torch.utils.data.DataLoader(
        frames, batch_size=4, num_workers=2, worker_init_fn=loader_worker_init, shuffle=False
    )
    position = 0
    for batch in loader:
        for j in range(len(batch["task"])):
            want = direct[position]
            np.testing.assert_array_equal(batch["actions"][j].numpy(), want["actions"])
            for cam in h.CAMERAS:
                np.testing.assert_array_equal(batch["images"][cam][j].numpy(), want["images"][cam])
            assert batch["task"][j] == want["task"]
            position += 1
    assert position == len(frames)
    clone = pickle.loads(pickle.dumps(frames))  # spawn-started workers get a pickled copy
    np.testing.assert_array_equal(clone[3]["images"][h.CAMERAS[0]], direct[3]["images"][h.CAMERAS[0]])


def test_image_cache_lives_outside_the_dataset_and_is_reused(datasets, tmp_path):
    root = datasets[("v3.0", "image")]
    before = fingerprint(root)
    make_frames(root, tmp_path)
    make_frames(root, tmp_path)
    assert len(list((tmp_path / "cache").glob("*.arrow"))) == 1
    make_frames(root, tmp_path, episodes=[1])
    assert len(list((tmp_path / "cache").glob("*.arrow"))) == 2
    assert fingerprint(root) == before


def test_image_cache_folder_keeps_to_its_budget_least_recently_used_first(datasets, tmp_path, monkeypatch):
    import gc
    import os
    import time

    from data_adapters import image_column_cache as icc

    root, cache = datasets[("v3.0", "image")], tmp_path / "cache"
    held = {eps: make_frames(root, tmp_path, episodes=list(eps)) for eps in ((0,), (1,), (2,))}
    files = {eps: f._image_cache.path for eps, f in held.items()}
    sizes = {eps: path.stat().st_size for eps, path in files.items()}
    for age, eps in enumerate(((1,), (0,), (2,))):  # last used: (2,) long ago, then (0,), then (1,)
        os.utime(files[eps], ns=(time.time_ns() - (age + 1) * 10**12,) * 2)
    stale_tmp = cache / f".{'0' * 32}.arrow.{'1' * 8}.tmp"  # a writer that died
    stale_tmp.write_bytes(b"x")
    os.utime(stale_tmp, (time.time() - 2 * 86400,) * 2)
    (cache / "notes.txt").write_text("not a cache")

    def present():
        return [eps for eps, path in files.items() if path.exists()]

    monkeypatch.setenv(icc.BUDGET_ENV, "0")
    make_frames(root, tmp_path, episodes=[0])
    assert present() == [(0,), (1,), (2,)]  # all in use by the loaders above: nothing goes
    assert not stale_tmp.exists() and (cache / "notes.txt").exists()
    del held[(2,)], held[(0,)]
    gc.collect()
    # Room for the cache being opened plus the most recently used other one: (2,) goes, (1,) stays.
    monkeypatch.setenv(icc.BUDGET_ENV, str((sizes[(0,)] + sizes[(1,)] + 1) / 1e9))
    again = make_frames(root, tmp_path, episodes=[0])
    assert present() == [(0,), (1,)]
    np.testing.assert_array_equal(again[0]["images"][h.CAMERAS[0]], h.image(0, 0, 0))
    monkeypatch.setenv(icc.BUDGET_ENV, "0")
    del held[(1,)]
    gc.collect()
    make_frames(root, tmp_path, episodes=[0])
    assert present() == [(0,)]
    monkeypatch.setenv(icc.BUDGET_ENV, "lots")
    with pytest.raises(ValueError, match=r"VLA_SFT_IMAGE_CACHE_GB='lots': expected a number of GB$"):
        make_frames(root, tmp_path, episodes=[0])
    monkeypatch.setenv(icc.BUDGET_ENV, "-1")
    with pytest.raises(ValueError, match=r"VLA_SFT_IMAGE_CACHE_GB='-1': expected a number of GB >= 0"):
        make_frames(root, tmp_path, episodes=[0])


def test_fingerprint_tracks_meta_and_file_sizes(tmp_path):
    root = h.write_dataset(tmp_path / "ds", storage="image")
    first = fingerprint(root)
    assert fingerprint(root) == first and len(first) == 16
    (root / ".cache").mkdir()
    (root / ".cache" / "x").write_text("hidden files do not count")
    assert fingerprint(root) == first
    stats = root / "meta" / "stats.json"
    stats.write_text(stats.read_text() + " ")
    second = fingerprint(root)
    assert second != first
    with open(root / "data" / "chunk-000" / "file-000.parquet", "ab") as f:
        f.write(b"x")
    assert fingerprint(root) != second


def test_split_episodes_is_deterministic_and_disjoint():
    episodes = list(range(20))
    train, val = split_episodes(episodes, 0.1, seed=0)
    assert len(val) == 2 and len(train) == 18
    assert sorted(train + val) == episodes and train == sorted(train) and val == sorted(val)
    assert split_episodes(reversed(episodes), 0.1, seed=0) == (train, val)
    assert split_episodes(episodes, 0.1, seed=1) != (train, val)
    assert split_episodes([4, 9], 0.01, seed=0)[1] != []  # a positive fraction keeps at least one
    assert split_episodes([4, 9], 0.9, seed=0)[0] != []  # and never takes all of them
    assert split_episodes([3], 0.5, seed=0) == ([3], [])
    assert split_episodes(episodes, 0.0, seed=0) == (episodes, [])
    with pytest.raises(ValueError, match=r"val_fraction must be in \[0, 1\)"):
        split_episodes(episodes, 1.0, seed=0)
    with pytest.raises(ValueError, match="duplicates"):
        split_episodes([1, 1, 2], 0.5, seed=0)
    with pytest.raises(ValueError, match="no episodes"):
        split_episodes([], 0.5, seed=0)


# -- errors ---------------------------------------------------------------------------------------------


def copy_of(datasets, key, tmp_path):
    return shutil.copytree(datasets[key], tmp_path / "copy")


def test_error_unsupported_version(datasets, tmp_path):
    root = copy_of(datasets, ("v3.0", "image"), tmp_path)
    info = json.loads((root / "meta/info.json").read_text())
    (root / "meta/info.json").write_text(json.dumps({**info, "codebase_version": "v1.6"}))
    with pytest.raises(
        DatasetFormatError, match=r"unsupported LeRobot codebase_version 'v1.6' in .*info.json"
    ):
        read_meta(root)


def test_error_missing_info(tmp_path):
    (tmp_path / "meta").mkdir()
    with pytest.raises(DatasetFormatError, match=r"missing meta/info.json in .*not a LeRobot dataset"):
        read_meta(tmp_path)
    with pytest.raises(DatasetFormatError, match="missing meta/info.json"):
        make_frames(tmp_path / "nowhere", tmp_path)


def test_error_empty_dataset(datasets, tmp_path):
    root = copy_of(datasets, ("v2.1", "video"), tmp_path)
    (root / "meta/episodes.jsonl").write_text("")
    with pytest.raises(DatasetFormatError, match="empty dataset at .*: 0 episodes"):
        read_meta(root)
    (root / "meta/episodes.jsonl").write_text('{"episode_index": 0, "tasks": ["t"], "length": 0}\n')
    with pytest.raises(DatasetFormatError, match="empty dataset at .*: 1 episodes but 0 frames"):
        read_meta(root)


@pytest.mark.parametrize("key", [("v3.0", "image"), ("v2.0", "image")])
def test_error_corrupt_parquet_names_file_and_episode(datasets, key, tmp_path):
    root = copy_of(datasets, key, tmp_path)
    rel = read_meta(root).episodes[1].data_path
    data = (root / rel).read_bytes()
    (root / rel).write_bytes(data[: len(data) // 2])  # truncated: footer gone
    episodes = "episodes 0, 1, 2" if key[0] == "v3.0" else "episode 1"
    with pytest.raises(DatasetFormatError, match=rf"corrupt parquet file .*{rel} \({episodes}\)"):
        read_numeric(root, ["action"])
    with pytest.raises(DatasetFormatError, match=rf"corrupt parquet file .*{rel} \({episodes}\)"):
        make_frames(root, tmp_path)


def test_error_data_rows_do_not_match_episode_meta(datasets, tmp_path):
    root = copy_of(datasets, ("v3.0", "image"), tmp_path)
    table = pq.read_table(root / "data/chunk-000/file-000.parquet")
    pq.write_table(table.slice(0, 10), root / "data/chunk-000/file-000.parquet")
    with pytest.raises(DatasetFormatError, match=r"has 10 rows but episode 1 needs rows 6\.\.14"):
        read_numeric(root, ["action"])


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_error_corrupt_or_truncated_video_names_file_key_episode(datasets, damage, tmp_path):
    root = copy_of(datasets, ("v3.0", "video"), tmp_path)
    rel = f"videos/{h.CAMERAS[1]}/chunk-000/file-000.mp4"
    data = (root / rel).read_bytes()
    (root / rel).write_bytes(b"\x00" * 64 + data[64:] if damage == "garbage" else data[: len(data) // 3])
    frames = make_frames(root, tmp_path)
    pattern = rf"corrupt or truncated video .*{rel} \(camera key '{h.CAMERAS[1]}', episode 2, frame 3\)"
    with pytest.raises(DatasetFormatError, match=pattern):
        frames[len(frames) - 1]


def test_error_truncated_v2_video(datasets, tmp_path):
    root = copy_of(datasets, ("v2.1", "video"), tmp_path)
    rel = f"videos/chunk-000/{h.CAMERAS[0]}/episode_000001.mp4"
    meta = read_meta(root)
    # Re-encode episode 1 of camera 0 with only 3 of its 9 frames: a well-formed but short file.
    from data_adapters.video import VideoEncoder

    encoder = VideoEncoder(root / rel, fps=h.FPS, width=h.IMAGE_W, height=h.IMAGE_H)
    for t in range(3):
        encoder.add(h.image(1, t, 0))
    encoder.close()
    frames = make_frames(root, tmp_path, episodes=[1])
    assert frames[2]["frame_index"] == 2
    with pytest.raises(
        DatasetFormatError, match=r"camera key .*high', episode 1, frame 7\): video ends before"
    ):
        frames[7]
    assert meta.episodes[1].length == 9


def test_error_non_finite_values_name_episode_and_frame(tmp_path):
    feats = {
        "observation.state": {"dtype": "float32", "shape": (2,)},
        "action": {"dtype": "float32", "shape": (2,)},
    }
    writer = LeRobotWriter(tmp_path / "ds", fps=10, features=feats)
    for ep in range(2):
        for t in range(4):
            bad = ep == 1 and t == 2
            state = np.array([0.0, np.nan if bad else 1.0])
            action = np.array([np.inf if ep == 0 and t == 3 else 0.0, 0.0])
            writer.add_frame({"observation.state": state, "action": action}, task="t")
        writer.save_episode()
    root = writer.finalize()
    with pytest.raises(
        DatasetFormatError, match=r"non-finite value nan in 'observation.state'\[1\] at episode 1, frame 2"
    ):
        read_numeric(root, ["observation.state"])
    with pytest.raises(
        DatasetFormatError, match=r"non-finite value inf in 'action'\[0\] at episode 0, frame 3"
    ):
        LeRobotFrames(
            root, state_keys=["observation.state"], action_keys=["action"], camera_keys=[], horizon=2
        )
    assert read_numeric(root, ["observation.state"], episodes=[0])[0].shape == (4, 2)


def test_error_missing_or_wrong_keys_list_existing(datasets, tmp_path):
    root = datasets[("v3.0", "image")]
    with pytest.raises(
        DatasetFormatError, match=r"state key 'observation.pos' is not a feature .*existing keys: \["
    ):
        LeRobotFrames(root, state_keys=["observation.pos"], action_keys=["action"], camera_keys=[], horizon=2)
    with pytest.raises(
        DatasetFormatError, match=r"camera key 'action' .* not image or video; camera keys: \["
    ):
        LeRobotFrames(
            root, state_keys=["observation.state"], action_keys=["action"], camera_keys=["action"], horizon=2
        )
    with pytest.raises(DatasetFormatError, match=r"numeric key 'observation.images.high' .* not numeric"):
        read_numeric(root, ["observation.images.high"])
    with pytest.raises(DatasetFormatError, match=r"numeric key 'nope' is not a feature .*'action', 'done'"):
        read_numeric(root, ["nope"])
    copy = copy_of(datasets, ("v3.0", "image"), tmp_path)
    table = pq.read_table(copy / "data/chunk-000/file-000.parquet").drop_columns(["action"])
    pq.write_table(table, copy / "data/chunk-000/file-000.parquet")
    with pytest.raises(DatasetFormatError, match=r"column 'action' missing from data file .*columns: \["):
        read_numeric(copy, ["action"])
