"""LoRA presets, trainable sets, merge, adapter save/load and merged export, on tiny models."""

from __future__ import annotations

import json
import re

import pytest
import torch
from torch import nn

from model_zoo.checkpoint import load_model, load_pretrained, save_checkpoint
from model_zoo.lora import (
    LoraSettings,
    apply_lora,
    load_adapter,
    merge_lora,
    save_adapter,
    trainable_summary,
)
from model_zoo.pi0 import Pi0Model
from tests.test_checkpoint import make_batch, make_model, outputs

torch.set_num_threads(1)

RANK = 4
VISION = "paligemma_with_expert.paligemma.model.vision_tower"
PROJECTOR = "paligemma_with_expert.paligemma.model.multi_modal_projector"
VLM = "paligemma_with_expert.paligemma.model.language_model"
EXPERT = "paligemma_with_expert.gemma_expert"
HEADS_PI05 = ["action_in_proj", "action_out_proj", "time_mlp_in", "time_mlp_out"]
HEADS_PI0 = ["action_in_proj", "action_out_proj", "action_time_mlp_in", "action_time_mlp_out", "state_proj"]


def expected_plan(base: Pi0Model, preset: str) -> tuple[set[str], list[str]]:
    """Independently of model_zoo.lora: which Linear modules get adapters, which modules train in full."""
    unused_modules = {n.rpartition(".")[0] for n in base.unused_parameter_names()}
    heads = HEADS_PI05 if base.config.pi05 else HEADS_PI0
    targets = set()
    for name, module in base.named_modules():
        if not isinstance(module, nn.Linear) or name in unused_modules:
            continue
        leaf = name.split(".")[-1]
        in_block = re.search(r"\.layers\.\d+\.(self_attn|mlp)\.", name) is not None
        gemma_leaf = leaf in {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
        siglip_leaf = leaf in {"q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"}
        if preset == "rlinf":
            hit = (name.startswith(VISION) and in_block and siglip_leaf) or (
                name.startswith(VLM) and in_block and gemma_leaf
            )
        else:
            hit = (name.startswith(VLM) or name.startswith(EXPERT)) and in_block and gemma_leaf
        if hit:
            targets.add(name)
    full = [EXPERT, PROJECTOR, *heads] if preset == "rlinf" else [VISION, PROJECTOR, *heads]
    return targets, sorted(full)


def randomize_lora(model: nn.Module, seed: int = 3) -> None:
    """LoRA B starts at zero (adapter = identity); make every adapter matter."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".lora_" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.05)


def test_settings_validation():
    assert LoraSettings(rank=8).alpha == 8
    assert LoraSettings(rank=8, alpha=16).alpha == 16
    with pytest.raises(ValueError, match=r"lora\.rank"):
        LoraSettings(rank=0)
    with pytest.raises(ValueError, match=r"lora\.rank"):
        LoraSettings(rank=2.5)
    with pytest.raises(ValueError, match=r"lora\.alpha"):
        LoraSettings(alpha=-1.0)
    with pytest.raises(ValueError, match=r"lora\.dropout"):
        LoraSettings(dropout=1.0)
    with pytest.raises(ValueError, match=r"lora\.preset"):
        LoraSettings(preset="all")


@pytest.mark.parametrize(("model_type", "preset"), [("pi05", "rlinf"), ("pi05", "openpi"), ("pi0", "rlinf")])
def test_trainable_sets_and_counts(model_type, preset):
    model = make_model(model_type)
    targets, full = expected_plan(model, preset)
    linears = {n: m for n, m in model.named_modules() if n in targets}
    expected_lora = sum(RANK * (m.in_features + m.out_features) for m in linears.values())
    base_total = sum(p.numel() for p in model.parameters())
    expected_full = sum(
        p.numel() for n, p in model.named_parameters() if any(n.startswith(f + ".") for f in full)
    )

    apply_lora(model, LoraSettings(rank=RANK, preset=preset))
    summary = trainable_summary(model)
    print(f"{model_type}/{preset}: {summary}")
    assert summary == {
        "trainable": expected_lora + expected_full,
        "total": base_total + expected_lora,
        "lora": expected_lora,
        "full_trainable_modules": full,
    }
    # Exactly the intended parameters train.
    wrapped = {n.rpartition(".lora_")[0] for n, _ in model.named_parameters() if ".lora_" in n}
    assert wrapped == targets
    for name, param in model.named_parameters():
        want = ".lora_" in name or any(name.startswith(f + ".") for f in full)
        assert param.requires_grad == want, name
    assert isinstance(model, Pi0Model)


def test_only_intended_params_get_gradients():
    model = make_model("pi05")
    apply_lora(model, LoraSettings(rank=RANK, preset="openpi"))
    randomize_lora(model)
    model.train()
    model.compute_loss(make_batch(model.config)).mean().backward()
    for name, param in model.named_parameters():
        if param.requires_grad:
            assert param.grad is not None and param.grad.abs().sum() > 0, f"{name} trains but got no gradient"
        else:
            assert param.grad is None, f"{name} is frozen but got a gradient"


@pytest.mark.parametrize("preset", ["rlinf", "openpi"])
def test_merge_equals_adapter_and_exports_as_plain_checkpoint(tmp_path, preset):
    base = make_model("pi05")
    base_keys = list(base.state_dict())
    batch = make_batch(base.config)
    base_out = outputs(base, batch)
    apply_lora(base, LoraSettings(rank=RANK, alpha=2 * RANK, preset=preset))
    randomize_lora(base)
    adapter_out = outputs(base, batch)
    assert not torch.allclose(adapter_out[0], base_out[0]), (
        "adapters had no effect; the test would be vacuous"
    )

    merged = merge_lora(base)
    assert isinstance(merged, Pi0Model) and not hasattr(merged, "peft_config")
    assert list(merged.state_dict()) == base_keys
    for got, want in zip(outputs(merged, batch), adapter_out, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)

    folder = save_checkpoint(merged, tmp_path / "merged")
    reloaded = load_model(folder).eval()
    for got, want in zip(outputs(reloaded, batch), outputs(merged, batch), strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize("model_type", ["pi05", "pi0"])
def test_adapter_roundtrip(tmp_path, model_type):
    model = make_model(model_type)
    apply_lora(model, LoraSettings(rank=RANK, preset="rlinf"))
    randomize_lora(model)
    with torch.no_grad():  # fully trainable weights changed by "training" must travel too
        model.action_out_proj.weight.add_(0.1)
        model.paligemma_with_expert.gemma_expert.model.layers[0].mlp.up_proj.weight.mul_(1.5)
    folder = save_adapter(model, tmp_path / "adapter")

    names = sorted(p.name for p in folder.iterdir())
    assert names == [
        "adapter_config.json",
        "adapter_model.safetensors",
        "non_lora_weights.safetensors",
        "vla_sft_lora.json",
    ]
    assert json.loads((folder / "adapter_config.json").read_text())["peft_type"] == "LORA"

    fresh = make_model(model_type)  # same seed: the same base weights
    load_adapter(fresh, folder)
    batch = make_batch(model.config)
    for got, want in zip(outputs(fresh, batch), outputs(model, batch), strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert trainable_summary(fresh) == trainable_summary(model)


def test_adapter_loads_with_plain_peft(tmp_path):
    """adapter_model.safetensors + adapter_config.json are in peft's own format."""
    from peft import PeftModel

    model = make_model("pi05")
    apply_lora(model, LoraSettings(rank=RANK, preset="openpi"))
    randomize_lora(model)
    save_adapter(model, tmp_path / "adapter")
    peft_model = PeftModel.from_pretrained(make_model("pi05"), str(tmp_path / "adapter"))
    ours = {n: p for n, p in model.named_parameters() if ".lora_" in n}
    theirs = {
        n.removeprefix("base_model.model."): p for n, p in peft_model.named_parameters() if ".lora_" in n
    }
    assert ours.keys() == theirs.keys()
    for name, param in ours.items():
        assert torch.equal(param, theirs[name]), name


def test_load_adapter_errors(tmp_path):
    model = make_model("pi05")
    apply_lora(model, LoraSettings(rank=RANK))
    with pytest.raises(ValueError, match="already carries LoRA"):
        apply_lora(model, LoraSettings(rank=RANK))
    save_adapter(model, tmp_path / "adapter")
    with pytest.raises(ValueError, match="differs in"):
        load_adapter(Pi0Model(make_model("pi0").config), tmp_path / "adapter")
    (tmp_path / "adapter" / "non_lora_weights.safetensors").unlink()
    with pytest.raises(ValueError, match="non_lora_weights.safetensors is missing"):
        load_adapter(make_model("pi05"), tmp_path / "adapter")
    with pytest.raises(ValueError, match="LoRA adapters"):
        save_checkpoint(model, tmp_path / "ckpt")
    with pytest.raises(ValueError, match="before apply_lora"):
        load_pretrained(model, tmp_path / "adapter")
    with pytest.raises(ValueError, match="no LoRA adapters"):
        merge_lora(make_model("pi05"))
