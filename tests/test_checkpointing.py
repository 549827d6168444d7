"""Checkpoint stores (local; S3 on a real S3-compatible server), atomicity, retention, exact state round trips."""

import json
import random
import uuid

import numpy as np
import pytest
import torch

from steps.train import checkpoint_store
from steps.train import checkpoints as ckpt
from steps.train.distributed import init_distributed
from steps.train.ema import EMA
from steps.train.schedule import LrSchedule, build_scheduler


def _stage(store, step, val_loss=None):
    staging = store.prepare(step)
    (staging / "a.bin").write_bytes(b"x" * 10)
    ckpt.write_json(staging / ckpt.STATE_FILE, {"step": step, "val_loss": val_loss})
    return staging, ["a.bin", ckpt.STATE_FILE]


def _commit(store, step, val_loss=None):
    staging, files = _stage(store, step, val_loss)
    store.commit(step, staging, files, is_main=True)
    if isinstance(store, ckpt.S3Store):
        store.seal(step)


def _s3_store(request, tmp_path, prefix):
    """An S3Store on the test S3 server (a fresh bucket), listing 3 keys a page to exercise pagination."""
    client = request.getfixturevalue("s3_env")
    request.getfixturevalue("monkeypatch").setattr(checkpoint_store, "LIST_PAGE_SIZE", 3)
    bucket = f"ckpt-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=bucket)
    return ckpt.S3Store(f"s3://{bucket}/{prefix}", client=client, cache_dir=tmp_path / "cache")


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    if request.param == "local":
        return ckpt.LocalStore(tmp_path / "ckpts")
    return _s3_store(request, tmp_path, "runs/x")


def test_only_complete_checkpoints_count(store):
    assert store.complete_steps() == []
    _commit(store, 10)
    # A half-written step 20: files staged (local) / uploaded without the marker (S3).
    staging, files = _stage(store, 20)
    if isinstance(store, ckpt.S3Store):
        store.commit(20, staging, files, is_main=True)  # uploaded, never sealed
    assert store.complete_steps() == [10]
    removed = store.clean_incomplete()
    assert removed
    assert store.complete_steps() == [10]
    folder = store.fetch(10)
    assert (folder / "a.bin").read_bytes() == b"x" * 10
    assert store.read_json(10, ckpt.STATE_FILE)["step"] == 10


def test_retention_keeps_last_k_and_best(store):
    for step, val in [(1, 0.5), (2, 0.2), (3, 0.4), (4, None), (5, 0.9)]:
        _commit(store, step, val)
    removed = ckpt.prune(store, keep_last=2)
    assert sorted(removed) == [1, 3]
    assert store.complete_steps() == [2, 4, 5]
    assert ckpt.best_step(store) == 2


def test_s3_delete_removes_every_object_of_the_step(request, tmp_path):
    store = _s3_store(request, tmp_path, "p")
    _commit(store, 7)

    def keys():
        listing = store.client.list_objects_v2(Bucket=store.bucket, Prefix="p/")
        return [o["Key"] for o in listing.get("Contents", [])]

    assert "p/step_000000007/COMPLETE" in keys()
    store.delete(7)
    assert not [k for k in keys() if k.startswith("p/step_000000007")]


def test_s3_store_names_a_bad_uri():
    for uri, match in (("s3:///runs", "no bucket name"), ("gs://b/runs", "not an s3:// URI")):
        with pytest.raises(ValueError, match=rf"checkpoint_dir '{uri}': {match}"):
            ckpt.S3Store(uri, client=object())


def test_local_commit_is_a_rename(tmp_path):
    store = ckpt.LocalStore(tmp_path)
    staging, files = _stage(store, 3)
    assert staging.name.startswith(".tmp-")
    store.commit(3, staging, files, is_main=True)
    assert not staging.exists()
    assert (tmp_path / "step_000000003" / ckpt.COMPLETE).is_file()
    # Re-saving the same step replaces it.
    staging, files = _stage(store, 3)
    (staging / "b.bin").write_bytes(b"y")
    store.commit(3, staging, files, is_main=True)
    assert (tmp_path / "step_000000003" / "b.bin").is_file()
    assert not list(tmp_path.glob(".trash-*"))


def test_rng_round_trip(tmp_path):
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    state = ckpt.capture_rng()
    torch.save(state, tmp_path / "rng.pt")
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(99)
    np.random.seed(99)
    random.seed(99)
    ckpt.restore_rng(torch.load(tmp_path / "rng.pt", weights_only=True))
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expected[0], got[0])
    np.testing.assert_array_equal(expected[1], got[1])
    assert expected[2] == got[2]


def _setup(seed=0, freeze_bias=False):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 2))
    if freeze_bias:
        model[1].bias.requires_grad_(False)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    sched = build_scheduler(opt, LrSchedule(peak_lr=1e-2, warmup_steps=2, decay_steps=10, end_lr=1e-3))
    return model, opt, sched, EMA(model, 0.9)


def _train(model, opt, sched, ema, steps):
    for _ in range(steps):
        model(torch.randn(5, 4)).pow(2).mean().backward()
        opt.step()
        sched.step()
        ema.update(model)
        opt.zero_grad()


@pytest.mark.parametrize("kind", ["local", "s3"])
def test_training_state_round_trip_is_exact(request, tmp_path, kind):
    ctx = init_distributed("cpu")
    store = ckpt.LocalStore(tmp_path / "c") if kind == "local" else _s3_store(request, tmp_path, "c")
    norm = tmp_path / "norm_stats.json"
    norm.write_text("{}")
    model, opt, sched, ema = _setup(freeze_bias=True)
    _train(model, opt, sched, ema, 3)
    ckpt.save_training_checkpoint(
        ctx, store, 3, model=model, optimizer=opt, scheduler=sched, ema=ema,
        trainer_state={"samples_seen": 24}, config_json=json.dumps({"k": 1}), norm_stats_path=norm, fsdp=False,
    )  # fmt: skip
    _train(model, opt, sched, ema, 2)
    reference = [p.detach().clone() for p in model.parameters()]

    model2, opt2, sched2, ema2 = _setup(seed=5, freeze_bias=True)  # different init: all must be restored
    frozen_before = model2[1].bias.detach().clone()
    assert ckpt.find_latest(ctx, store) == 3
    state = ckpt.load_training_checkpoint(
        ctx, store, 3, model=model2, optimizer=opt2, scheduler=sched2, ema=ema2, fsdp=False
    )
    assert state["samples_seen"] == 24 and state["step"] == 3
    # The frozen bias is not part of the checkpoint (trainable weights only).
    assert torch.equal(model2[1].bias, frozen_before)
    with torch.no_grad():
        model2[1].bias.copy_(model[1].bias)
    _train(model2, opt2, sched2, ema2, 2)  # RNG restored too: the same random inputs follow
    for a, b in zip(reference, model2.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]
    folder = store.fetch(3)
    for name in (ckpt.MODEL_FILE, ckpt.EMA_FILE, ckpt.OPTIMIZER_FILE, ckpt.RNG_FILE, ckpt.CONFIG_FILE,
                 ckpt.NORM_STATS_FILE, ckpt.COMPLETE):  # fmt: skip
        assert (folder / name).is_file(), name


def test_checkpoint_of_another_model_is_refused(tmp_path):
    ctx = init_distributed("cpu")
    store = ckpt.LocalStore(tmp_path / "c")
    norm = tmp_path / "norm_stats.json"
    norm.write_text("{}")
    model, opt, sched, ema = _setup()
    ckpt.save_training_checkpoint(
        ctx, store, 1, model=model, optimizer=opt, scheduler=sched, ema=None,
        trainer_state={"samples_seen": 8}, config_json="{}", norm_stats_path=norm, fsdp=False,
    )  # fmt: skip
    other = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Linear(16, 2))
    opt2 = torch.optim.AdamW(other.parameters(), lr=1e-2)
    sched2 = build_scheduler(opt2, LrSchedule(peak_lr=1e-2, warmup_steps=2, decay_steps=10, end_lr=1e-3))
    with pytest.raises(ValueError, match="checkpoint_dir: .*different model"):
        ckpt.load_training_checkpoint(ctx, store, 1, model=other, optimizer=opt2, scheduler=sched2, ema=None,
                                      fsdp=False)  # fmt: skip


def test_hook_sees_each_file_before_commit(tmp_path):
    """The fault-injection hook runs between files; a failure there leaves no complete checkpoint."""
    ctx = init_distributed("cpu")
    store = ckpt.LocalStore(tmp_path / "c")
    norm = tmp_path / "norm_stats.json"
    norm.write_text("{}")
    model, opt, sched, ema = _setup()

    class Boom(Exception):
        pass

    def hook(name):
        if name == ckpt.OPTIMIZER_FILE:
            raise Boom

    with pytest.raises(Boom):
        ckpt.save_training_checkpoint(
            ctx, store, 2, model=model, optimizer=opt, scheduler=sched, ema=ema,
            trainer_state={"samples_seen": 8}, config_json="{}", norm_stats_path=norm, fsdp=False, hook=hook,
        )  # fmt: skip
    assert store.complete_steps() == []
    assert store.clean_incomplete() == [".tmp-step_000000002"]
