"""Data correctness gates (issue #16) on datasets written here with pyarrow and PyAV directly
(tests/foreign_datasets.py): every file proven to open before training, every episode's values checked,
the statistics cache keyed by content, and each failure one line on the console, nothing half-written."""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from data_adapters.lerobot_format import DatasetFormatError, read_meta, split_episodes
from data_adapters.registry import get_config_type
from steps.fetch.verify import verify_dataset_files
from steps.stats.norm_stats import compute_norm_stats
from tests import foreign_datasets as fd
from tests.test_flow import FLOW, flow_env, inspect_run

CT = get_config_type("pi05_libero")


@pytest.fixture(scope="module")
def libero_v20(tmp_path_factory) -> Path:
    return fd.write_libero_v20(tmp_path_factory.mktemp("foreign") / "libero_v20")


@pytest.fixture(scope="module")
def mp4_v21(tmp_path_factory) -> Path:
    return fd.write_v21_mp4(tmp_path_factory.mktemp("foreign") / "mp4_v21")


def _copy(src: Path, dst: Path) -> Path:
    return Path(shutil.copytree(src, dst))


def _half(path: Path) -> None:
    with open(path, "r+b") as handle:
        handle.truncate(path.stat().st_size // 2)


# --- the statistics cache, keyed by content ----------------------------------------------------------


def test_in_place_value_change_with_the_same_size_is_not_served_from_the_cache(libero_v20, tmp_path, caplog):
    root, cache = _copy(libero_v20, tmp_path / "ds"), tmp_path / "cache"
    first = compute_norm_stats(CT, root, [0, 1, 2], check_episodes=[3], cache_dir=cache)
    with caplog.at_level(logging.INFO, logger="steps.stats.norm_stats"):
        assert (
            compute_norm_stats(CT, root, [0, 1, 2], check_episodes=[3], cache_dir=cache).metadata
            == first.metadata
        )
    assert "cache hit" in caplog.text
    caplog.clear()
    # One action value rewritten in place: same file, same size, and even the modification time put back.
    path = root / fd.data_file(1)
    before = path.stat()
    old = float(fd.action(1, 4)[2])
    fd.set_float_in_place(path, old, old + 0.25)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = path.stat()
    assert (after.st_size, after.st_ino, after.st_mtime_ns) == (
        before.st_size,
        before.st_ino,
        before.st_mtime_ns,
    )
    with caplog.at_level(logging.INFO, logger="steps.stats.norm_stats"):
        changed = compute_norm_stats(CT, root, [0, 1, 2], check_episodes=[3], cache_dir=cache)
    assert "cache hit" not in caplog.text
    assert changed.metadata["dataset"]["content_digest"] != first.metadata["dataset"]["content_digest"]
    assert changed.actions.mean[2] > first.actions.mean[2]  # the new value, not the cached old one
    assert not list(cache.rglob(".*tmp*"))


def test_a_hub_snapshot_is_found_by_its_commit(libero_v20, tmp_path, caplog):
    """A Hub snapshot never changes under its commit: the cache trusts the commit, not file identities."""
    root, cache = _copy(libero_v20, tmp_path / "ds"), tmp_path / "cache"
    first = compute_norm_stats(CT, root, [0, 1, 2], revision="a" * 40, cache_dir=cache)
    moved = Path(shutil.move(root, tmp_path / "snapshot"))  # another folder, the same commit
    with caplog.at_level(logging.INFO, logger="steps.stats.norm_stats"):
        again = compute_norm_stats(CT, moved, [0, 1, 2], revision="a" * 40, cache_dir=cache)
    assert "cache hit" in caplog.text and again.metadata["dataset"]["root"] == str(moved.resolve())
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="steps.stats.norm_stats"):
        other = compute_norm_stats(CT, moved, [0, 1, 2], revision="b" * 40, cache_dir=cache)
    assert "cache hit" not in caplog.text and other.metadata["dataset"]["revision"] == "b" * 40
    assert other.metadata["cache_key"] == first.metadata["cache_key"]  # same values, same content key


def test_a_held_out_episode_with_a_nan_fails_the_stats_step_and_caches_nothing(libero_v20, tmp_path):
    root, cache = _copy(libero_v20, tmp_path / "ds"), tmp_path / "cache"
    fd.set_float_in_place(root / fd.data_file(3), float(fd.action(3, 6)[5]), float("nan"))
    # Training episodes alone are fine; checking the held-out one finds the value.
    compute_norm_stats(CT, root, [0, 1, 2], cache_dir=cache / "train_only")
    with pytest.raises(DatasetFormatError) as caught:
        compute_norm_stats(CT, root, [0, 1, 2], check_episodes=[3], cache_dir=cache / "checked")
    assert str(caught.value) == (
        f"non-finite value nan in 'actions'[5] at episode 3, frame 6 ({root / fd.data_file(3)})"
    )
    assert not (cache / "checked").exists()


# --- every file opens and covers its episodes ----------------------------------------------------------


def test_files_are_checked_once_and_again_after_any_change(mp4_v21, tmp_path):
    root, cache = _copy(mp4_v21, tmp_path / "ds"), tmp_path / "verified"
    first = verify_dataset_files(read_meta(root), cache_dir=cache)
    assert (first.data_files, first.videos, first.from_cache) == (4, 8, 0)
    assert verify_dataset_files(read_meta(root), cache_dir=cache).from_cache == 12
    video = root / fd.video_file(1, "wrist_image")
    _half(video)
    with pytest.raises(DatasetFormatError) as caught:
        verify_dataset_files(read_meta(root), cache_dir=cache)
    assert str(caught.value) == (
        f"video {video} (wrist_image, episode 1) does not open: Invalid data found when processing input"
    )


def test_a_video_cut_short_with_its_index_intact_is_found(mp4_v21, tmp_path):
    """faststart mp4 (index before the frames): cut short, the container still opens."""
    import av

    root = _copy(mp4_v21, tmp_path / "ds")
    video = root / fd.video_file(2, "image")
    remuxed = tmp_path / "faststart.mp4"
    with av.open(str(video)) as src, av.open(str(remuxed), "w", options={"movflags": "faststart"}) as dst:
        stream = dst.add_stream_from_template(src.streams.video[0])
        for packet in src.demux(src.streams.video[0]):
            if packet.dts is not None:
                packet.stream = stream
                dst.mux(packet)
    data = remuxed.read_bytes()
    assert data.find(b"moov") < data.find(b"mdat")  # the index comes first
    video.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(
        DatasetFormatError, match=re.escape(f"video {video} (image) is cut short: it holds ")
    ) as caught:
        verify_dataset_files(read_meta(root), cache_dir=tmp_path / "verified")
    assert str(caught.value).endswith("but episode 2 needs frames up to t=1.300s (14 frames)")


def test_parquet_cut_short_or_missing_is_named(libero_v20, tmp_path):
    root = _copy(libero_v20, tmp_path / "ds")
    data = root / fd.data_file(2)
    _half(data)
    with pytest.raises(DatasetFormatError, match=re.escape(f"corrupt parquet file {data} (episode 2): ")):
        verify_dataset_files(read_meta(root), cache_dir=tmp_path / "verified")
    data.unlink()
    with pytest.raises(DatasetFormatError, match=re.escape(f"missing data file {data} (episode 2)")):
        verify_dataset_files(read_meta(root), cache_dir=tmp_path / "verified")


# --- real flow runs: one line on the console, before train ---------------------------------------------


def _console_lines(out: str) -> list[str]:
    return [re.sub(r"^.*\(pid \d+\)\] ", "", line) for line in out.splitlines()]


def _partial_files(cache: Path) -> list[Path]:
    """Temporary files of an atomic write (a write that was cut off leaves one behind)."""
    return [p for p in cache.rglob("*") if ".tmp" in p.name or (p.name.startswith(".") and p.is_file())]


@pytest.mark.slow
def test_bad_data_fails_before_train_with_one_line_and_good_foreign_data_trains(
    libero_v20, mp4_v21, tmp_path
):
    """Five `python flows/sft_flow.py run --demo` at once, each on a dataset its YAML names: a NaN in the
    held-out episode, a parquet file cut short, a video cut short (each fails before train), corrupt PNG
    images (not decoded before training: found by a torchrun worker, shown as the same one line), and the
    good v2.1 mp4 dataset, which trains, evaluates and registers."""
    val = split_episodes(range(len(fd.LENGTHS)), 1 / len(fd.LENGTHS), 0)[1][0]
    datasets = {name: _copy(src, tmp_path / "data" / name) for name, src in
                (("nan", libero_v20), ("parquet", libero_v20), ("video", mp4_v21), ("png", libero_v20),
                 ("good", mp4_v21))}  # fmt: skip
    nan_file = datasets["nan"] / fd.data_file(val)
    fd.set_float_in_place(nan_file, float(fd.action(val, 5)[3]), float("nan"))
    _half(datasets["parquet"] / fd.data_file(2))
    _half(datasets["video"] / fd.video_file(1, "wrist_image"))
    fd.corrupt_pngs(datasets["png"], "image")
    cases = {
        "nan": ("compute_norm_stats", f"non-finite value nan in 'actions'[3] at episode {val}, frame 5 ({nan_file})"),
        "parquet": ("fetch_data", f"corrupt parquet file {datasets['parquet'] / fd.data_file(2)} (episode 2): "),
        "video": ("fetch_data", f"video {datasets['video'] / fd.video_file(1, 'wrist_image')} (wrist_image, "
                  "episode 1) does not open: Invalid data found when processing input"),
        "png": ("train", f"corrupt image 'image' in {datasets['png'] / 'data' / 'chunk-000'}/episode_00000"),
        "good": (None, None),
    }  # fmt: skip
    procs = {}
    for name in cases:
        root = tmp_path / name
        root.mkdir()
        yaml = fd.config_yaml(root / f"{name}.yaml", datasets[name], name=f"foreign_{name}")
        # No retries: a retry of a user error fails the same way (issue #15 stops retrying those).
        args = ["--config-value", "cluster", '{"retries": 0}', "run", "--config_type", str(yaml), "--demo", "--max_steps", "2", "--eval_episodes", "1",
                "--eval_samples", "4"]  # fmt: skip
        procs[name] = subprocess.Popen([sys.executable, str(FLOW), *args], cwd=root, env=flow_env(root),
                                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    for name, (step, expected) in cases.items():
        out, _ = procs[name].communicate(timeout=1200)
        lines, root = _console_lines(out), tmp_path / name
        assert "Traceback" not in out and "Internal error" not in out, out[-4000:]
        assert not _partial_files(root / "cache"), _partial_files(root / "cache")
        told = (
            f"--demo: training the tiny model on {datasets[name]}, the dataset {root / f'{name}.yaml'} names "
        )
        assert told in out
        if step is None:
            assert procs[name].returncode == 0, out[-4000:]
            assert inspect_run(root)["successful"]
            continue
        assert procs[name].returncode != 0, out[-4000:]
        at = lines.index("Dataset error:")
        assert lines[at + 1].startswith(expected), lines[at : at + 3]
        saved = Path(re.fullmatch(r"\(traceback: (.+)\)", lines[at + 2]).group(1))
        # A training worker saves its own traceback beside its inputs; the flow saves the others'.
        named = "train_error.rank0.traceback.txt" if step == "train" else None
        assert saved.name == named if named else saved.name.startswith(f"{step}-")
        assert saved.read_text().startswith("Traceback (most recent call last)")
        assert f"/{step}/" in out and "ChildFailedError" not in out
        if step != "train":  # failed in that step, before any model was built, and no statistics of bad data
            assert "/train/" not in out and not list((root / "cache" / "norm_stats").glob("*.json"))
