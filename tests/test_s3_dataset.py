"""s3:// datasets against a real S3-compatible server: pinned snapshots, reuse, changes, errors, start."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest

from data_adapters.lerobot_format import fingerprint
from data_adapters.registry import get_config_type
from data_adapters.synthetic import make_synthetic_dataset
from steps.config.validate import InputError, validate_run_inputs
from steps.fetch import s3 as s3_dataset
from steps.fetch.dataset import fetch_dataset
from steps.fetch.s3 import fetch_s3_dataset
from tests.s3_helpers import upload_folder


@pytest.fixture(scope="module")
def metaworld_ds(tmp_path_factory):
    cfg = get_config_type("pi05_metaworld")
    return make_synthetic_dataset(tmp_path_factory.mktemp("s3ds") / "ds", cfg, num_episodes=6, min_len=3,
                                  max_len=6, image_size=8)  # fmt: skip


@pytest.fixture
def bucket(s3_env):
    name = f"b-{uuid.uuid4().hex[:12]}"
    s3_env.create_bucket(Bucket=name)
    return name


def test_fetch_downloads_once_and_matches_the_local_copy(s3_env, bucket, metaworld_ds, tmp_path, monkeypatch):
    monkeypatch.setattr(s3_dataset, "LIST_PAGE_SIZE", 4)  # several listing pages
    uploaded = upload_folder(s3_env, bucket, "data/mw", metaworld_ds)
    uri = f"s3://{bucket}/data/mw/"
    first = fetch_s3_dataset(uri, cache_dir=tmp_path)
    assert first.downloaded == uploaded
    again = fetch_s3_dataset(uri, first.revision, cache_dir=tmp_path)
    assert (again.path, again.downloaded) == (first.path, 0)  # reused, nothing downloaded
    assert fingerprint(first.path) == fingerprint(metaworld_ds)
    for path in metaworld_ds.rglob("*"):
        if path.is_file():
            assert (first.path / path.relative_to(metaworld_ds)).read_bytes() == path.read_bytes()
    # Through the fetch step: pinned at the snapshot, split like a local folder.
    result = fetch_dataset("pi05_metaworld", dataset=uri, s3_cache_dir=tmp_path)
    local = fetch_dataset("pi05_metaworld", dataset=metaworld_ds)
    assert (result.source, result.revision, result.path) == ("s3", first.revision, str(first.path))
    assert (result.fingerprint, result.train_episodes, result.val_episodes) == (
        local.fingerprint, local.train_episodes, local.val_episodes)  # fmt: skip
    assert not [p for p in first.path.parent.iterdir() if p.name.startswith(".")]  # no staging left


def test_a_changed_dataset_is_a_new_snapshot_and_breaks_an_old_pin(s3_env, bucket, metaworld_ds, tmp_path):
    upload_folder(s3_env, bucket, "mw", metaworld_ds)
    uri = f"s3://{bucket}/mw"
    old = fetch_s3_dataset(uri, cache_dir=tmp_path)
    s3_env.put_object(Bucket=bucket, Key="mw/meta/extra.txt", Body=b"new file")
    with pytest.raises(ValueError, match=f"changed since revision {old.revision}"):
        fetch_s3_dataset(uri, old.revision, cache_dir=tmp_path)
    new = fetch_s3_dataset(uri, cache_dir=tmp_path)
    assert new.revision != old.revision and new.path != old.path
    assert (new.path / "meta" / "extra.txt").read_bytes() == b"new file"


def test_errors_name_the_dataset(s3_env, bucket, tmp_path):
    s3_env.put_object(Bucket=bucket, Key="notlerobot/readme.txt", Body=b"x")
    with pytest.raises(ValueError, match=rf"s3://{bucket}/notlerobot: 1 objects .* no meta/info.json"):
        fetch_s3_dataset(f"s3://{bucket}/notlerobot", cache_dir=tmp_path)
    with pytest.raises(ValueError, match="the bucket does not exist"):
        fetch_s3_dataset("s3://no-such-bucket-here/x", cache_dir=tmp_path)
    with pytest.raises(ValueError, match="no bucket name"):
        fetch_s3_dataset("s3:///x", cache_dir=tmp_path)
    assert not list(tmp_path.rglob("*.parquet"))


class _ClientBetween:
    """The real S3 client, with ``between`` run after each listing (to change the bucket mid-fetch) and every
    downloaded body cut to ``cut`` bytes when set (a stream that ended early)."""

    def __init__(self, client, between=None, cut=None):
        self.client, self.between, self.cut = client, between, cut

    def list_objects_v2(self, **kwargs):
        page = self.client.list_objects_v2(**kwargs)
        if self.between is not None:
            self.between()
        return page

    def get_object(self, **kwargs):
        answer = self.client.get_object(**kwargs)
        if self.cut is not None:
            import io

            answer["Body"] = io.BytesIO(answer["Body"].read()[: self.cut])
        return answer


def test_a_replaced_or_cut_object_leaves_no_snapshot(s3_env, bucket, metaworld_ds, tmp_path):
    upload_folder(s3_env, bucket, "mw", metaworld_ds)
    uri = f"s3://{bucket}/mw"
    info = "mw/meta/info.json"
    replace = lambda: s3_env.put_object(Bucket=bucket, Key=info, Body=b"{}")  # noqa: E731
    with pytest.raises(ValueError, match=rf"dataset {uri}: an object changed during the download \(retry\)"):
        fetch_s3_dataset(uri, client=_ClientBetween(s3_env, between=replace), cache_dir=tmp_path)
    with pytest.raises(ValueError, match=rf"dataset {uri}: .* has 3 bytes, listed \d+"):
        fetch_s3_dataset(uri, client=_ClientBetween(s3_env, cut=3), cache_dir=tmp_path)
    # Nothing half-written: no snapshot, no staging folder, no partial file.
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]


def test_start_checks_an_s3_dataset_in_seconds(s3_env, bucket, metaworld_ds, tmp_path, monkeypatch):
    upload_folder(s3_env, bucket, "mw", metaworld_ds)
    common = dict(check_tracking=False, tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    rc = validate_run_inputs(config_type="pi05_metaworld", dataset=f"s3://{bucket}/mw", **common)
    assert (rc.data.dataset_kind, rc.data.dataset) == ("s3", f"s3://{bucket}/mw")
    # The right bytes, the wrong config type: named by key before any download.
    with pytest.raises(InputError, match="--dataset: .*observation"):
        validate_run_inputs(config_type="pi0_libero", dataset=f"s3://{bucket}/mw", **common)
    with pytest.raises(InputError, match=r"--dataset: .*no object mw2/meta/info.json"):
        validate_run_inputs(config_type="pi05_metaworld", dataset=f"s3://{bucket}/mw2", **common)
    # Nothing listens on the endpoint: one line, fast, no long retries.
    from tests.server_helpers import free_port

    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{free_port()}")
    started = time.monotonic()
    with pytest.raises(InputError, match="--dataset: .*S3 cannot be reached"):
        validate_run_inputs(config_type="pi05_metaworld", dataset=f"s3://{bucket}/mw", **common)
    assert time.monotonic() - started < 15


def test_a_remote_node_fetches_the_pinned_snapshot_again(s3_env, bucket, metaworld_ds, tmp_path, monkeypatch):
    from steps.train.launch import node_dataset_root

    upload_folder(s3_env, bucket, "mw", metaworld_ds)
    uri = f"s3://{bucket}/mw"
    monkeypatch.setenv("VLA_SFT_CACHE", str(tmp_path / "node-cache"))
    seen = fetch_dataset("pi05_metaworld", dataset=uri, s3_cache_dir=tmp_path / "fetch-node")
    rc = validate_run_inputs(config_type="pi05_metaworld", dataset=uri, check_tracking=False, check_remote=False,
                             tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")  # fmt: skip
    # fetch_data ran on another machine: its folder is not here.
    fetched = {**seen.to_dict(), "path": str(tmp_path / "elsewhere" / "ds")}
    root = node_dataset_root(rc, fetched)
    assert root.startswith(str(tmp_path / "node-cache")) and fingerprint(root) == seen.fingerprint
    s3_env.put_object(Bucket=bucket, Key="mw/meta/extra.txt", Body=b"changed after fetch_data")
    with pytest.raises(ValueError, match="changed since revision"):
        node_dataset_root(rc, {**fetched, "path": str(tmp_path / "gone")})


def test_export_round_trip_through_s3(s3_env, bucket, tmp_path):
    from steps.train.launch import local_export, publish_export

    export = tmp_path / "export"
    (export / "sub").mkdir(parents=True)
    (export / "model.safetensors").write_bytes(b"\x00weights" * 100)
    (export / "sub" / "config.json").write_text('{"a": 1}')
    uri = publish_export(str(export), f"s3://{bucket}/ckpt/L1")
    assert uri == f"s3://{bucket}/ckpt/L1/export"
    local = Path(local_export(uri, tmp_path / "node"))
    assert sorted(p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file()) == [
        "model.safetensors", "sub/config.json"]  # fmt: skip
    assert (local / "model.safetensors").read_bytes() == (export / "model.safetensors").read_bytes()
    assert not [p for p in local.parent.iterdir() if p.name.startswith(".")]  # no staging left
    # An upload that never finished (no marker) is refused, and the old download stays intact.
    s3_env.put_object(Bucket=bucket, Key="half/export/model.safetensors", Body=b"partial")
    with pytest.raises(ValueError, match="no COMPLETE marker"):
        local_export(f"s3://{bucket}/half/export", tmp_path / "node")
    assert (local / "sub" / "config.json").is_file()


def test_missing_credentials_are_named(s3_env, bucket, tmp_path, monkeypatch):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance role lookup
    import boto3

    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)  # boto3 caches the credentials it resolved earlier
    with pytest.raises(
        ValueError, match=rf"dataset s3://{bucket}/mw: no AWS credentials \(set AWS_ACCESS_KEY_ID"
    ):
        fetch_s3_dataset(f"s3://{bucket}/mw", cache_dir=tmp_path)
