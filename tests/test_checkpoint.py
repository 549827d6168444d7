"""Checkpoint loading (openpi / LeRobot layouts, shards, Hub cache, meta device) and export, tiny models."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from model_zoo.checkpoint import (
    EMBED_KEY,
    EXPERT_LM_HEAD_KEY,
    VLM_LM_HEAD_KEY,
    CheckpointError,
    assign_state_dict,
    load_model,
    load_pretrained,
    plan_load,
    save_checkpoint,
)
from model_zoo.config import CAMERA_SLOTS, ModelConfig
from model_zoo.hub import HubUnavailableError
from model_zoo.pi0 import Pi0Model
from tests.model_helpers import REFERENCE_DIR

torch.set_num_threads(1)


def tiny_config(model_type: str = "pi05") -> ModelConfig:
    return ModelConfig(model_type=model_type, variant="tiny", action_horizon=4, max_token_len=8)


def make_model(model_type: str = "pi05", seed: int = 0) -> Pi0Model:
    torch.manual_seed(seed)
    model = Pi0Model(tiny_config(model_type))
    # Fresh models have zero-initialised tensors (adaRMS dense, norms); randomise all so that a tensor
    # that failed to load cannot hide behind an equal initial value.
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0.0, 0.02)
    return model.eval()


def make_batch(config: ModelConfig, batch_size: int = 2, seed: int = 1) -> dict:
    gen = torch.Generator().manual_seed(seed)
    length = config.max_token_len
    token_mask = torch.arange(length)[None].expand(batch_size, length) < torch.tensor([[5], [length]])
    return {
        "images": {s: torch.rand(batch_size, 3, 224, 224, generator=gen) * 2 - 1 for s in CAMERA_SLOTS},
        "image_masks": {s: torch.tensor([True, s != "right_wrist_0_rgb"]) for s in CAMERA_SLOTS},
        "state": torch.randn(batch_size, 32, generator=gen),
        "tokens": torch.randint(0, config.vocab_size, (batch_size, length), generator=gen),
        "token_mask": token_mask,
        "actions": torch.randn(batch_size, config.action_horizon, 32, generator=gen),
        "action_is_pad": torch.zeros(batch_size, config.action_horizon, dtype=torch.bool),
    }


@torch.no_grad()
def outputs(model: Pi0Model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(2)
    shape = batch["actions"].shape
    noise = torch.randn(shape, generator=gen)
    time = torch.rand(shape[0], generator=gen) * 0.9 + 0.05
    loss = model.compute_loss(batch, noise=noise, time=time)
    actions = model.sample_actions(batch, num_steps=2, noise=noise)
    return loss, actions


def file_keys(path: Path) -> list[str]:
    with safe_open(str(path), framework="pt") as handle:
        return list(handle.keys())  # noqa: SIM118


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        torch.testing.assert_close(sa[key], sb[key], rtol=0, atol=0, msg=key)


@pytest.fixture(scope="module")
def pi05_model() -> Pi0Model:
    return make_model("pi05")


@pytest.mark.parametrize(("model_type", "layout"), [("pi05", "openpi"), ("pi0", "lerobot")])
def test_roundtrip_identical_outputs(tmp_path, model_type, layout):
    model = make_model(model_type)
    folder = save_checkpoint(model, tmp_path / "ckpt", layout=layout, config={"note": "tiny"})
    keys = file_keys(folder / "model.safetensors")
    prefix = "model." if layout == "lerobot" else ""
    # save_model semantics: the tied pair is stored once, under lm_head, like the public checkpoints.
    assert prefix + VLM_LM_HEAD_KEY in keys
    assert prefix + EMBED_KEY not in keys
    assert all(k.startswith(prefix) for k in keys)
    meta = json.loads((folder / "config.json").read_text())
    assert meta["note"] == "tiny" and meta["checkpoint_layout"] == layout
    assert meta["model_config"]["model_type"] == model_type

    loaded = load_model(folder)
    assert isinstance(loaded, Pi0Model) and loaded.config == model.config
    assert_same_weights(model, loaded.eval())
    # The tie survives: embedding and lm_head are one Parameter again.
    pg = loaded.paligemma_with_expert.paligemma
    assert pg.lm_head.weight is pg.model.language_model.embed_tokens.weight
    batch = make_batch(model.config)
    for want, got in zip(outputs(model, batch), outputs(loaded, batch), strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_report_of_lerobot_load_names_the_fixes(tmp_path, pi05_model):
    save_checkpoint(pi05_model, tmp_path / "ckpt", layout="lerobot")
    report = load_pretrained(make_model("pi05", seed=5), tmp_path / "ckpt")
    assert report.layout == "lerobot" and report.ok
    assert report.filled_from_tied == {EMBED_KEY: VLM_LM_HEAD_KEY}
    assert not report.unexpected and not report.missing


@pytest.mark.parametrize(
    ("model_type", "stored", "expected"),
    [
        ("pi05", "action_time_mlp_in", "time_mlp_in"),
        ("pi0", "time_mlp_out", "action_time_mlp_out"),
    ],
)
def test_lerobot_time_mlp_names_map_both_ways(tmp_path, model_type, stored, expected):
    source = make_model(model_type)
    state = {f"model.{k}": v.clone() for k, v in source.state_dict().items() if k != EMBED_KEY}
    for suffix in ("weight", "bias"):
        state[f"model.{stored}.{suffix}"] = state.pop(f"model.{expected}.{suffix}")
    state[f"model.{EXPERT_LM_HEAD_KEY}"] = torch.zeros(8, 4)  # the unused expert head: skipped
    save_file(state, str(tmp_path / "model.safetensors"))

    target = make_model(model_type, seed=9)
    report = load_pretrained(target, tmp_path)
    assert report.renamed == {f"{stored}.weight": f"{expected}.weight", f"{stored}.bias": f"{expected}.bias"}
    assert report.dropped == [EXPERT_LM_HEAD_KEY]
    assert_same_weights(source, target)


def test_missing_tensor_fails_with_report_and_loads_nothing(tmp_path, pi05_model):
    state = {k: v for k, v in pi05_model.state_dict().items() if k not in (EMBED_KEY, "action_out_proj.bias")}
    save_file(state, str(tmp_path / "model.safetensors"))
    target = make_model("pi05", seed=3)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(CheckpointError, match=r"(?s)missing 1.*missing in checkpoint: action_out_proj\.bias"):
        load_pretrained(target, tmp_path)
    for key, value in target.state_dict().items():
        assert torch.equal(value, before[key]), f"{key} changed although the load failed"

    report = load_pretrained(target, tmp_path, strict=False)
    assert report.missing == ["action_out_proj.bias"]
    assert torch.equal(target.action_out_proj.bias, before["action_out_proj.bias"])
    assert torch.equal(target.action_in_proj.weight, pi05_model.action_in_proj.weight)


def test_wrong_shape_fails_with_report(tmp_path, pi05_model):
    state = {k: v for k, v in pi05_model.state_dict().items() if k != EMBED_KEY}
    state["action_in_proj.weight"] = torch.zeros(7, 32)
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(
        CheckpointError, match=r"(?s)wrong shape 1.*action_in_proj\.weight checkpoint \[7, 32\]"
    ):
        load_pretrained(make_model("pi05"), tmp_path)


def test_pi0_checkpoint_into_pi05_model_is_refused(tmp_path):
    save_checkpoint(make_model("pi0"), tmp_path / "pi0")
    with pytest.raises(CheckpointError, match=r"missing \d+"):
        load_pretrained(make_model("pi05"), tmp_path / "pi0")


class _Trap:
    """Unpickling this creates a marker file: proof that a pickle was (not) executed."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("name", ["pytorch_model.bin", "model.pt", "model.pth", "last.ckpt"])
def test_pickle_checkpoints_are_refused_never_loaded(tmp_path, name, pi05_model):
    marker = tmp_path / "pickle_was_executed"
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / name).write_bytes(pickle.dumps(_Trap(marker)))
    with pytest.raises(CheckpointError, match="pickle"):
        load_pretrained(pi05_model, folder / name)
    with pytest.raises(CheckpointError, match=rf"pickle.*{name}"):
        load_pretrained(pi05_model, folder)
    assert not marker.exists()


def test_sharded_checkpoint(tmp_path, pi05_model):
    state = {k: v.contiguous() for k, v in pi05_model.state_dict().items() if k != EMBED_KEY}
    keys = sorted(state)
    half = len(keys) // 2
    weight_map = {}
    for i, part in enumerate((keys[:half], keys[half:])):
        name = f"model-{i + 1:05d}-of-00002.safetensors"
        save_file({k: state[k] for k in part}, str(tmp_path / name))
        weight_map.update(dict.fromkeys(part, name))
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    target = make_model("pi05", seed=4)
    load_pretrained(target, tmp_path)
    assert_same_weights(pi05_model, target)

    (tmp_path / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(CheckpointError, match="shard.*do not exist"):
        load_pretrained(target, tmp_path)


def test_meta_device_model_loads_and_reties(tmp_path, pi05_model):
    save_checkpoint(pi05_model, tmp_path / "ckpt")
    with torch.device("meta"):
        target = Pi0Model(pi05_model.config)
    report = load_pretrained(target, tmp_path / "ckpt")
    assert report.ok
    assert not any(p.is_meta for p in target.parameters())
    pg = target.paligemma_with_expert.paligemma
    assert pg.lm_head.weight is pg.model.language_model.embed_tokens.weight
    batch = make_batch(pi05_model.config)
    for want, got in zip(outputs(pi05_model, batch), outputs(target.eval(), batch), strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_assign_state_dict_takes_the_tensors_and_keeps_ties(pi05_model):
    state = {k: v.clone() for k, v in pi05_model.state_dict().items()}
    with torch.device("meta"):
        target = Pi0Model(pi05_model.config)
    assign_state_dict(target, state)
    assert not any(p.is_meta for p in target.parameters())
    pg = target.paligemma_with_expert.paligemma
    assert pg.lm_head.weight is pg.model.language_model.embed_tokens.weight  # one Parameter again
    assert pg.lm_head.weight.data_ptr() == state[EMBED_KEY].data_ptr()  # the given tensor, not a copy
    trainable = [p.requires_grad for p in pi05_model.parameters()]
    assert [p.requires_grad for p in target.parameters()] == trainable
    batch = make_batch(pi05_model.config)
    for want, got in zip(outputs(pi05_model, batch), outputs(target.eval(), batch), strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_meta_model_refuses_partial_load(tmp_path, pi05_model):
    state = {k: v for k, v in pi05_model.state_dict().items() if k not in (EMBED_KEY, "time_mlp_in.bias")}
    save_file(state, str(tmp_path / "model.safetensors"))
    with torch.device("meta"):
        target = Pi0Model(pi05_model.config)
    with pytest.raises(CheckpointError, match="meta device"):
        load_pretrained(target, tmp_path, strict=False)


def test_cast_to_model_dtype(tmp_path, pi05_model):
    save_checkpoint(pi05_model, tmp_path / "ckpt")
    target = make_model("pi05", seed=6).to(torch.bfloat16)
    load_pretrained(target, tmp_path / "ckpt")
    assert target.action_in_proj.weight.dtype == torch.bfloat16
    assert torch.equal(target.action_in_proj.weight, pi05_model.action_in_proj.weight.to(torch.bfloat16))


def _fake_hub_cache(cache: Path, repo_id: str, files: dict[str, Path]) -> None:
    """The Hub cache layout snapshot_download reads offline: refs/main -> snapshots/<commit>/."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo_dir = cache / f"models--{repo_id.replace('/', '--')}"
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(commit)
    snapshot = repo_dir / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for name, source in files.items():
        (snapshot / name).write_bytes(source.read_bytes())


def test_hub_id_offline(tmp_path, monkeypatch, pi05_model):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    cache = tmp_path / "hub"
    with pytest.raises(HubUnavailableError, match=r"(?s)HF_HUB_OFFLINE.*HF_HUB_OFFLINE=0.*local folder"):
        load_pretrained(pi05_model, "someone/not-cached", cache_dir=cache)

    folder = save_checkpoint(pi05_model, tmp_path / "ckpt", layout="lerobot")
    _fake_hub_cache(cache, "someone/pi05-tiny", {n: folder / n for n in ("model.safetensors", "config.json")})
    target = make_model("pi05", seed=8)
    report = load_pretrained(target, "someone/pi05-tiny", cache_dir=cache)
    assert report.layout == "lerobot"
    assert_same_weights(pi05_model, target)


def test_bad_sources(tmp_path, pi05_model):
    with pytest.raises(CheckpointError, match="neither an existing file or folder nor a Hub id"):
        load_pretrained(pi05_model, tmp_path / "nope" / "deeper")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match=r"No model\.safetensors"):
        load_pretrained(pi05_model, tmp_path / "empty")


def test_save_refuses_existing_and_leaves_no_temp(tmp_path, pi05_model):
    save_checkpoint(pi05_model, tmp_path / "ckpt")
    with pytest.raises(ValueError, match="already exists"):
        save_checkpoint(pi05_model, tmp_path / "ckpt")
    save_checkpoint(pi05_model, tmp_path / "ckpt", overwrite=True, layout="lerobot")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
    with pytest.raises(ValueError, match="layout"):
        save_checkpoint(pi05_model, tmp_path / "other", layout="jax")
    with pytest.raises(ValueError, match="reserved"):
        save_checkpoint(pi05_model, tmp_path / "other", config={"model_config": {}})


def on_disk_shapes(model_type: str) -> dict[str, tuple[int, ...]]:
    """Keys of a public openpi checkpoint file: the reference TSV minus the tied embedding."""
    shapes = {}
    for line in (REFERENCE_DIR / f"{model_type}_state_dict.tsv").read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        key, shape, count = line.split("\t")
        for i in range(int(count)):
            shapes[key.replace("{i}", str(i))] = tuple(json.loads(shape))
    del shapes[EMBED_KEY]
    return shapes


@pytest.mark.parametrize("model_type", ["pi0", "pi05"])
@pytest.mark.parametrize("layout", ["openpi", "lerobot", "lerobot_swapped_time_mlp"])
def test_public_checkpoint_keys_map_onto_real_model(model_type, layout):
    with torch.device("meta"):
        model = Pi0Model(ModelConfig(model_type=model_type, variant="real"))
    model_shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    disk = on_disk_shapes(model_type)
    if layout != "openpi":
        disk = {f"model.{k}": v for k, v in disk.items()}
    if layout == "lerobot_swapped_time_mlp":
        old, new = (
            ("time_mlp_", "action_time_mlp_") if model_type == "pi05" else ("action_time_mlp_", "time_mlp_")
        )
        disk = {
            (f"model.{new}" + k[len(f"model.{old}") :] if k.startswith(f"model.{old}") else k): v
            for k, v in disk.items()
        }
    report, sources = plan_load(model_shapes, disk)
    assert report.ok, report.summary()
    assert not report.unexpected
    assert report.dropped == [EXPERT_LM_HEAD_KEY]
    assert report.filled_from_tied == {EMBED_KEY: VLM_LM_HEAD_KEY}
    assert set(sources) == set(model_shapes)
    assert len(report.renamed) == (4 if layout == "lerobot_swapped_time_mlp" else 0)


def test_folder_conventions(tmp_path, pi05_model):
    # LeRobot training runs keep the weights in checkpoints/<step>/pretrained_model/.
    save_checkpoint(pi05_model, tmp_path / "run" / "pretrained_model", layout="lerobot")
    target = make_model("pi05", seed=11)
    load_pretrained(target, tmp_path / "run")
    assert_same_weights(pi05_model, target)

    (tmp_path / "two").mkdir()
    for name in ("a.safetensors", "b.safetensors"):
        save_file({"x": torch.zeros(1)}, str(tmp_path / "two" / name))
    with pytest.raises(CheckpointError, match="several safetensors files"):
        load_pretrained(target, tmp_path / "two")

    (tmp_path / "adapter").mkdir()
    save_file({"x": torch.zeros(1)}, str(tmp_path / "adapter" / "adapter_model.safetensors"))
    with pytest.raises(CheckpointError, match="LoRA adapter.*load_adapter"):
        load_pretrained(target, tmp_path / "adapter")
