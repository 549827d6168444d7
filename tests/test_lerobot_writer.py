"""LeRobotWriter: layouts of v3.0 / v2.1 / v2.0, round trips through our reader, stats, atomicity."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_adapters.lerobot_format import fingerprint, read_meta
from data_adapters.lerobot_reader import LeRobotFrames, read_numeric
from data_adapters.lerobot_writer import LeRobotWriter
from data_adapters.synthetic import make_synthetic_dataset
from tests import lerobot_data_helpers as h

VIDEO_MEAN_ABS_TOL = 6.0  # lossy AV1/h264 on the smooth test images (measured ~1-3)


def frames_of(root, tmp_path, **kw):
    return LeRobotFrames(
        root,
        state_keys=["observation.state", "observation.velocity"],
        action_keys=["action"],
        camera_keys=list(h.CAMERAS),
        horizon=kw.pop("horizon", 3),
        cache_dir=tmp_path / "cache",
        **kw,
    )


@pytest.mark.parametrize(
    ("version", "storage", "codec"),
    [
        ("v3.0", "image", "av1"),
        ("v3.0", "video", "av1"),
        ("v3.0", "video", "h264"),
        ("v2.1", "image", "av1"),
        ("v2.1", "video", "av1"),
        ("v2.0", "video", "h264"),
    ],
)
def test_round_trip_through_reader(tmp_path, version, storage, codec):
    root = h.write_dataset(tmp_path / "ds", version=version, storage=storage, video_codec=codec)
    numeric = read_numeric(root, ["observation.state", "action", "done"])
    for ep, length in enumerate(h.LENGTHS):
        want = np.stack(
            [np.concatenate([h.state(ep, t), h.action(ep, t), [t == length - 1]]) for t in range(length)]
        )
        np.testing.assert_array_equal(numeric[ep], want.astype(np.float32))
    frames = frames_of(root, tmp_path)
    assert len(frames) == sum(h.LENGTHS)
    for ep, t in [(0, 0), (1, 4), (2, 3)]:
        item = frames[h.flat_position(ep, t)]
        assert item["task"] == h.TASKS[ep]
        for i, cam in enumerate(h.CAMERAS):
            got, want = item["images"][cam], h.image(ep, t, i)
            assert got.shape == (h.IMAGE_H, h.IMAGE_W, 3) and got.dtype == np.uint8
            if storage == "image":
                np.testing.assert_array_equal(got, want)
            else:
                assert np.abs(got.astype(float) - want).mean() < VIDEO_MEAN_ABS_TOL


def test_v3_layout_info_and_episode_rows(tmp_path):
    root = h.write_dataset(tmp_path / "ds", storage="video", robot_type="test_arm")
    info = json.loads((root / "meta/info.json").read_text())
    assert info["codebase_version"] == "v3.0"
    assert (info["total_episodes"], info["total_frames"], info["total_tasks"]) == (3, sum(h.LENGTHS), 2)
    assert info["data_path"] == "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
    assert info["video_path"] == "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
    assert info["robot_type"] == "test_arm" and info["fps"] == h.FPS and info["chunks_size"] == 1000
    assert set(info["features"]) >= {"timestamp", "frame_index", "episode_index", "index", "task_index"}
    cam_info = info["features"][h.CAMERAS[0]]["info"]
    assert (cam_info["video.codec"], cam_info["video.height"], cam_info["video.width"]) == ("av1", 32, 48)
    for rel in ["data/chunk-000/file-000.parquet", "meta/episodes/chunk-000/file-000.parquet", "meta/tasks.parquet",
                "meta/stats.json", f"videos/{h.CAMERAS[1]}/chunk-000/file-000.mp4"]:  # fmt: skip
        assert (root / rel).is_file(), rel

    rows = pq.read_table(root / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    starts = np.cumsum([0, *h.LENGTHS])
    for ep, row in enumerate(rows):
        assert (row["episode_index"], row["length"], row["tasks"]) == (ep, h.LENGTHS[ep], [h.TASKS[ep]])
        assert (row["dataset_from_index"], row["dataset_to_index"]) == (starts[ep], starts[ep + 1])
        assert row[f"videos/{h.CAMERAS[0]}/from_timestamp"] == pytest.approx(starts[ep] / h.FPS)
        assert row[f"videos/{h.CAMERAS[0]}/to_timestamp"] == pytest.approx(starts[ep + 1] / h.FPS)
        assert row["stats/action/count"] == [h.LENGTHS[ep]]
    schema = pq.read_schema(root / "data/chunk-000/file-000.parquet")
    assert schema.field("observation.state").type == pa.list_(pa.float32(), 3)  # fixed-size list, as LeRobot
    assert schema.field("done").type == pa.bool_()
    assert h.CAMERAS[0] not in schema.names  # video cameras live in the mp4 files only
    tasks = pq.read_table(root / "meta/tasks.parquet").to_pandas()
    assert list(tasks.index) == ["pick the cube", "open the drawer"] and list(tasks.task_index) == [0, 1]


def test_v3_image_column_is_png_struct(tmp_path):
    root = h.write_dataset(tmp_path / "ds", storage="image")
    table = pq.read_table(root / "data/chunk-000/file-000.parquet")
    assert table.schema.field(h.CAMERAS[0]).type == pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    first = table.column(h.CAMERAS[0])[0].as_py()
    assert first["bytes"][:8] == b"\x89PNG\r\n\x1a\n"
    assert table.column("index").to_pylist() == list(range(sum(h.LENGTHS)))
    assert table.column("timestamp").to_pylist()[:3] == pytest.approx([0.0, 0.1, 0.2])


@pytest.mark.parametrize("version", ["v2.1", "v2.0"])
def test_v2_layouts(tmp_path, version):
    root = h.write_dataset(tmp_path / "ds", version=version, storage="video")
    info = json.loads((root / "meta/info.json").read_text())
    assert info["codebase_version"] == version
    assert info["data_path"] == "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"
    assert (
        info["video_path"] == "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4"
    )
    assert (info["total_videos"], info["total_chunks"]) == (3 * len(h.CAMERAS), 1)
    video_info_key = "video_info" if version == "v2.0" else "info"
    assert info["features"][h.CAMERAS[0]][video_info_key]["video.fps"] == h.FPS
    for ep in range(3):
        assert (root / f"data/chunk-000/episode_{ep:06d}.parquet").is_file()
        assert (root / f"videos/chunk-000/{h.CAMERAS[0]}/episode_{ep:06d}.mp4").is_file()
    episodes = [json.loads(line) for line in (root / "meta/episodes.jsonl").read_text().splitlines()]
    assert episodes[1] == {"episode_index": 1, "tasks": [h.TASKS[1]], "length": h.LENGTHS[1]}
    tasks = [json.loads(line) for line in (root / "meta/tasks.jsonl").read_text().splitlines()]
    assert tasks == [{"task_index": 0, "task": h.TASKS[0]}, {"task_index": 1, "task": h.TASKS[1]}]
    assert (root / "meta/episodes_stats.jsonl").is_file() == (version == "v2.1")
    assert (root / "meta/stats.json").is_file() == (version == "v2.0")


def test_v3_splits_files_and_chunks(tmp_path):
    # Tiny size limits: every episode opens a new data and video file; chunks of 2 files.
    root = h.write_dataset(
        tmp_path / "ds", storage="video", chunks_size=2, data_file_size_mb=1e-6, video_file_size_mb=1e-6
    )
    assert sorted(p.relative_to(root).as_posix() for p in (root / "data").rglob("*.parquet")) == [
        "data/chunk-000/file-000.parquet",
        "data/chunk-000/file-001.parquet",
        "data/chunk-001/file-000.parquet",
    ]
    meta = read_meta(root)
    spans = [ep.videos[h.CAMERAS[0]] for ep in meta.episodes.values()]
    assert [s.from_timestamp for s in spans] == [0.0, 0.0, 0.0]
    assert spans[2].path == f"videos/{h.CAMERAS[0]}/chunk-001/file-000.mp4"
    frames = frames_of(root, tmp_path)
    item = frames[h.flat_position(2, 1)]
    np.testing.assert_array_equal(item["state"][:3], h.state(2, 1))
    assert np.abs(item["images"][h.CAMERAS[0]].astype(float) - h.image(2, 1, 0)).mean() < VIDEO_MEAN_ABS_TOL


def test_stats_json_is_exact_for_numeric_features(tmp_path):
    root = h.write_dataset(tmp_path / "ds", storage="image")
    stats = json.loads((root / "meta/stats.json").read_text())
    actions = np.concatenate([[h.action(ep, t) for t in range(n)] for ep, n in enumerate(h.LENGTHS)]).astype(
        float
    )
    np.testing.assert_allclose(stats["action"]["mean"], actions.mean(0), rtol=1e-6)
    np.testing.assert_allclose(stats["action"]["std"], actions.std(0), rtol=1e-6)
    np.testing.assert_allclose(stats["action"]["q01"], np.quantile(actions, 0.01, axis=0), rtol=1e-6)
    np.testing.assert_allclose(stats["action"]["max"], actions.max(0))
    assert stats["action"]["count"] == [sum(h.LENGTHS)]
    assert np.array(stats[h.CAMERAS[0]]["mean"]).shape == (3, 1, 1)
    assert 0.0 <= np.min(stats[h.CAMERAS[0]]["min"]) <= np.max(stats[h.CAMERAS[0]]["max"]) <= 1.0


def test_finalize_is_atomic(tmp_path):
    root = tmp_path / "ds"
    writer = LeRobotWriter(root, fps=h.FPS, features=h.features("image"))
    writer.add_frame(h.frame(0, 0), task="t")
    writer.save_episode()
    assert not root.exists()
    [work] = [p for p in tmp_path.iterdir() if p.name.startswith("ds.tmp-")]
    assert (work / "data").is_dir()
    writer.finalize()
    assert root.is_dir() and not work.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]
    with pytest.raises(FileExistsError, match="exists and is not an empty folder"):
        LeRobotWriter(root, fps=h.FPS, features=h.features("image"))


def test_abort_and_context_manager_leave_nothing(tmp_path):
    with (
        pytest.raises(RuntimeError, match="boom"),
        LeRobotWriter(tmp_path / "a", fps=10, features=h.features()) as w,
    ):
        w.add_frame(h.frame(0, 0), task="t")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "b").mkdir()  # an empty target folder is allowed and replaced
    with LeRobotWriter(tmp_path / "b", fps=10, features=h.features("video")) as w:
        w.add_frame(h.frame(0, 0), task="t")
        w.save_episode()
    assert read_meta(tmp_path / "b").total_frames == 1


def test_writer_rejects_bad_input(tmp_path):
    feats = h.features("image")
    with pytest.raises(ValueError, match="version 'v1.6' not supported"):
        LeRobotWriter(tmp_path / "x", fps=10, features=feats, version="v1.6")
    with pytest.raises(ValueError, match="'index' is written automatically"):
        LeRobotWriter(tmp_path / "x", fps=10, features={**feats, "index": {"dtype": "int64", "shape": (1,)}})
    with pytest.raises(ValueError, match="'bad' has dtype 'complex64'"):
        LeRobotWriter(tmp_path / "x", fps=10, features={"bad": {"dtype": "complex64", "shape": (1,)}})
    with pytest.raises(ValueError, match="fps must be a positive integer"):
        LeRobotWriter(tmp_path / "x", fps=7.5, features=feats)
    writer = LeRobotWriter(tmp_path / "x", fps=10, features=feats)
    frame = h.frame(0, 0)
    with pytest.raises(ValueError, match=r"missing \['action'\]"):
        writer.add_frame({k: v for k, v in frame.items() if k != "action"}, task="t")
    with pytest.raises(ValueError, match=r"unknown \['extra'\]"):
        writer.add_frame({**frame, "extra": 1}, task="t")
    with pytest.raises(ValueError, match="'action' must have shape"):
        writer.add_frame({**frame, "action": np.zeros(5)}, task="t")
    with pytest.raises(ValueError, match=r"'observation.images.high' must be uint8 \(32, 48, 3\)"):
        writer.add_frame({**frame, h.CAMERAS[0]: np.zeros((32, 48, 3), np.float32)}, task="t")
    with pytest.raises(ValueError, match="task must be a non-empty string"):
        writer.add_frame(frame, task="")
    with pytest.raises(ValueError, match="no frames were added"):
        writer.save_episode()
    with pytest.raises(ValueError, match="no episodes were saved"):
        writer.finalize()
    writer.add_frame(frame, task="t")
    with pytest.raises(ValueError, match="1 frames were added but not saved"):
        writer.finalize()
    writer.abort()
    with pytest.raises(ValueError, match="already finalized or aborted"):
        writer.add_frame(frame, task="t")


# -- synthetic datasets -------------------------------------------------------------------------------

CFG = SimpleNamespace(
    cameras={"base_0_rgb": ("cam.base",), "left_wrist_0_rgb": ("cam.wrist",), "right_wrist_0_rgb": ()},
    state_keys=("state.pos", "state.gripper"),
    action_keys=("actions",),
    state_dim=4,
    action_dim=4,
)


def test_synthetic_dataset_follows_config_schema_and_is_deterministic(tmp_path):
    sizes = {"state.pos": 3, "state.gripper": (1,)}
    a = make_synthetic_dataset(tmp_path / "a", CFG, num_episodes=3, min_len=8, max_len=12, features=sizes)
    b = make_synthetic_dataset(tmp_path / "b", CFG, num_episodes=3, min_len=8, max_len=12, features=sizes)
    c = make_synthetic_dataset(
        tmp_path / "c", CFG, num_episodes=3, min_len=8, max_len=12, features=sizes, seed=1
    )
    meta = read_meta(a)
    assert meta.features["state.pos"]["shape"] == [3] and meta.features["state.gripper"]["shape"] == [1]
    assert (
        meta.features["cam.base"]["shape"] == [64, 64, 3] and meta.features["cam.wrist"]["dtype"] == "image"
    )
    assert all(8 <= ep.length <= 12 for ep in meta.episodes.values())
    assert fingerprint(a) == fingerprint(b) != fingerprint(c)
    keys = ["state.pos", "state.gripper", "actions"]
    for ep, values in read_numeric(a, keys).items():
        np.testing.assert_array_equal(values, read_numeric(b, keys)[ep])
        state, actions = values[:, :4], values[:, 4:]
        # Actions are next-state targets: close to the next state, far from zero and moving.
        np.testing.assert_allclose(actions[:-1], state[1:], atol=0.05)
        assert np.abs(actions - state).mean() < 0.5 * np.abs(actions).mean()
    frames = LeRobotFrames(a, state_keys=CFG.state_keys, action_keys=CFG.action_keys,
                           camera_keys=["cam.base", "cam.wrist"], horizon=4, cache_dir=tmp_path / "cache")  # fmt: skip
    first, second = frames[0]["images"], frames[1]["images"]
    assert not np.array_equal(first["cam.base"], second["cam.base"])  # frames differ
    assert not np.array_equal(first["cam.base"], first["cam.wrist"])  # cameras differ
    assert first["cam.base"].std() > 20  # structured, not flat


def test_synthetic_video_dataset_and_dim_split(tmp_path):
    root = make_synthetic_dataset(tmp_path / "v", CFG, num_episodes=2, min_len=5, max_len=6, version="v2.1",
                                  image_storage="video", image_size=(32, 48))  # fmt: skip
    meta = read_meta(root)
    assert meta.version == "v2.1" and meta.video_keys == ["cam.base", "cam.wrist"]
    assert [meta.features[k]["shape"] for k in ("state.pos", "state.gripper")] == [[2], [2]]  # even split
    with pytest.raises(ValueError, match="state dims .* do not fit state_dim=4"):
        make_synthetic_dataset(tmp_path / "w", CFG, features={"state.pos": 4})
