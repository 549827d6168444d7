"""The LeRobot reference venv lookup (benchmarks/lerobot_venv.py) and the data-pipeline table's ratios."""

from __future__ import annotations

import pytest

from benchmarks import bench_data_pipeline
from benchmarks.lerobot_venv import lerobot_python


def test_each_release_has_its_own_cached_venv(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("VLA_SFT_LEROBOT_VENV", raising=False)
    monkeypatch.delenv("VLA_SFT_LEROBOT061_VENV", raising=False)
    assert lerobot_python() == str(tmp_path / ".cache/vla-sft/lerobot-venv/bin/python")
    assert lerobot_python(version="0.6.1") == str(tmp_path / ".cache/vla-sft/lerobot061-venv/bin/python")


def test_environment_and_explicit_overrides(monkeypatch, tmp_path):
    monkeypatch.setenv("VLA_SFT_LEROBOT061_VENV", str(tmp_path / "v061"))
    monkeypatch.setenv("VLA_SFT_LEROBOT_VENV", str(tmp_path / "v044"))
    assert lerobot_python(version="0.6.1") == str(tmp_path / "v061/bin/python")
    assert lerobot_python(version="0.4.4") == str(tmp_path / "v044/bin/python")
    assert lerobot_python("/x/bin/python", version="0.6.1") == "/x/bin/python"


def test_unknown_release_is_one_clear_error():
    with pytest.raises(
        ValueError, match=r"LeRobot version '0\.5\.0': no reference venv known \(have 0\.4\.4, 0\.6\.1\)"
    ):
        lerobot_python(version="0.5.0")


def test_table_has_both_releases_and_medians_of_per_round_ratios(capsys):
    # Per round (0, 1, 2): ours 100, 200, 400 and LeRobot 0.4.4 20, 5, 10 fps. Per-round ratios 5x, 40x,
    # 40x -> 40x; the ratio of the medians (200 / 10 = 20x) would mix rounds measured under different loads.
    fps = {
        "ours": (100, 200, 400),
        "ours_transform": (50, 50, 50),
        "lerobot 0.4.4": (20, 5, 10),
        "lerobot 0.6.1": (10, 10, 40),
        "floor": (300, 300, 300),
    }
    rows = [
        {"storage": storage, "role": role, "workers": workers, "round": rnd, "fps": value}
        for storage in ("image", "video")
        for role, values in fps.items()
        for workers in ((0,) if role == "floor" else (0, 2))
        for rnd, value in enumerate(values)
    ]
    rows.append({"storage": "video", "role": "lerobot 0.6.1", "workers": 2, "round": 3, "error": "crashed"})
    results = {
        "rows": rows,
        "lerobot_versions": ["0.4.4", "0.6.1"],
        "load_avg_before": 1,
        "load_avg_after": 2,
    }
    bench_data_pipeline.print_table(results)
    out = capsys.readouterr().out
    assert "| LeRobot 0.4.4 fps | ours / 0.4.4 | LeRobot 0.6.1 fps | ours / 0.6.1 |" in out
    # ours / 0.6.1 per round: 10x, 20x, 10x -> 10x; floor / ours: 3x, 1.5x, 0.75x -> 1.5x
    assert "| image | 0 | 200 | 50 | 10.0 | 40.0x | 10.0 | 10.0x | 300 | 1.50x |" in out
    assert "| video | 2 | 200 | 50 | 10.0 | 40.0x | 10.0 | 10.0x | 300 | 1.50x |" in out
    # 0.6.1 / 0.4.4 per round: 0.5x, 2x, 4x -> 2x
    assert "LeRobot 0.6.1 / 0.4.4 (median of per-round ratios): image w0 2.00x" in out
