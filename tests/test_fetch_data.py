"""Fetch step: local folders, Hub ids from a pre-populated HF cache (offline), and the errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from data_adapters.lerobot_format import fingerprint
from data_adapters.registry import get_config_type
from data_adapters.synthetic import make_synthetic_dataset
from steps.fetch.dataset import FetchResult, fetch_dataset

REPO = Path(__file__).resolve().parents[1]
COMMIT = "0123456789abcdef0123456789abcdef01234567"
REPO_ID = "someone/metaworld_small"


@pytest.fixture(scope="module")
def metaworld_ds(tmp_path_factory):
    cfg = get_config_type("pi05_metaworld")
    return make_synthetic_dataset(tmp_path_factory.mktemp("fetch") / "ds", cfg, num_episodes=10, min_len=3,
                                  max_len=6, image_size=8)  # fmt: skip


def run_cli(args, *, env_extra, cwd):
    env = {**os.environ, "PYTHONPATH": str(REPO), **env_extra}
    return subprocess.run([sys.executable, "-m", "steps.fetch.dataset", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip


def test_local_folder(metaworld_ds):
    result = fetch_dataset("pi05_metaworld", dataset=metaworld_ds, val_fraction=0.2, seed=3)
    assert isinstance(result, FetchResult)
    assert result.path == str(metaworld_ds.resolve()) and result.source == "local" and result.revision is None
    assert result.version == "v3.0" and result.fingerprint == fingerprint(metaworld_ds)
    assert len(result.val_episodes) == 2 and sorted(result.train_episodes + result.val_episodes) == list(
        range(10)
    )
    assert result.num_episodes == 10 and result.fps == 10.0
    again = fetch_dataset(
        get_config_type("pi05_metaworld"), dataset=str(metaworld_ds), val_fraction=0.2, seed=3
    )
    assert again == result  # deterministic
    assert json.loads(json.dumps(result.to_dict())) == result.to_dict()
    exact = fetch_dataset("pi05_metaworld", dataset=metaworld_ds, val_episodes=3)
    assert len(exact.val_episodes) == 3
    none = fetch_dataset("pi05_metaworld", dataset=metaworld_ds, val_episodes=0)
    assert none.val_episodes == [] and len(none.train_episodes) == 10


def test_bad_local_inputs(metaworld_ds, tmp_path):
    with pytest.raises(ValueError, match="no such folder"):
        fetch_dataset("pi05_metaworld", dataset=tmp_path / "nope")
    with pytest.raises(ValueError, match="which the dataset does not have"):
        fetch_dataset("pi0_libero", dataset=metaworld_ds)
    with pytest.raises(ValueError, match=r"val_episodes must be an integer in 0\.\.9"):
        fetch_dataset("pi05_metaworld", dataset=metaworld_ds, val_episodes=10)
    with pytest.raises(ValueError, match="missing meta/info.json"):
        fetch_dataset("pi05_metaworld", dataset=tmp_path)
    with pytest.raises(
        ValueError, match="unknown config type 'pi05_metawrld'.*Did you mean 'pi05_metaworld'"
    ):
        fetch_dataset("pi05_metawrld", dataset=metaworld_ds)


def test_maniskill_without_dataset_points_to_custom_yaml():
    with pytest.raises(ValueError, match="has no default dataset") as info:
        fetch_dataset("pi0_maniskill")
    assert "yaml" in str(info.value).lower()


def _hf_cache(tmp_path, dataset_root) -> Path:
    """A Hugging Face hub cache holding REPO_ID at COMMIT (the layout snapshot_download writes)."""
    cache = tmp_path / "hf_cache"
    repo = cache / f"datasets--{REPO_ID.replace('/', '--')}"
    shutil.copytree(dataset_root, repo / "snapshots" / COMMIT)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    return cache


def test_hub_id_from_the_cache_offline(metaworld_ds, tmp_path):
    cache = _hf_cache(tmp_path, metaworld_ds)
    proc = run_cli(["--config_type", "pi05_metaworld", "--dataset", REPO_ID, "--cache_dir", str(cache)],
                   env_extra={"HF_HUB_OFFLINE": "1"}, cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["source"] == "hub" and result["dataset_id"] == REPO_ID and result["revision"] == COMMIT
    assert Path(result["path"]) == cache / f"datasets--{REPO_ID.replace('/', '--')}" / "snapshots" / COMMIT
    assert result["fingerprint"] == fingerprint(metaworld_ds)
    # Pinned: asking for the commit itself gives the same snapshot.
    pinned = run_cli(["--config_type", "pi05_metaworld", "--dataset", REPO_ID, "--revision", COMMIT,
                      "--cache_dir", str(cache)], env_extra={"HF_HUB_OFFLINE": "1"}, cwd=tmp_path)  # fmt: skip
    assert pinned.returncode == 0 and json.loads(pinned.stdout)["path"] == result["path"]


def test_hub_id_not_cached_offline_says_how_to_fix(tmp_path):
    proc = run_cli(["--config_type", "pi05_metaworld", "--dataset", "someone/not_downloaded",
                    "--cache_dir", str(tmp_path / "empty")], env_extra={"HF_HUB_OFFLINE": "1"}, cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 2 and proc.stdout == ""
    message = proc.stderr
    assert "'someone/not_downloaded' is not in the Hugging Face cache" in message
    assert "HF_HUB_OFFLINE is set" in message and "Fix:" in message and "--dataset" in message
