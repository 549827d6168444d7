"""LoRA fine-tuning of pi0 / pi0.5 through peft, with two presets.

- "rlinf": LoRA on SigLIP (attention q/k/v/out, MLP fc1/fc2) and the PaliGemma Gemma (attention q/k/v/o,
  MLP gate/up/down); the whole action expert and every projection / head (projector, action_in/out_proj,
  state_proj, time MLPs) stay fully trainable. RLinf applies peft with r = alpha = lora_rank, dropout 0.
- "openpi": LoRA on attention + MLP of both Gemma stacks (VLM and expert); SigLIP, projector and heads
  stay fully trainable; everything else of the Gemma stacks (embedding, norms, adaRMS) is frozen, as
  openpi's `Pi0Config.get_freeze_filter` does.

Layers that cannot affect the loss get no adapter: the VLM lm_head (RLinf targets it, but pi0 never
decodes text and the head is tied to the input embedding) and the parts of the last VLM layer after
K/V (`Pi0Model.unused_parameter_names`). An adapter there would be a trainable tensor without gradient,
which DDP rejects and which only wastes optimizer state.

Adapters are injected in place (`peft.inject_adapter_in_model`): the model stays a `Pi0Model`, so
`compute_loss` / `sample_actions`, FSDP wrapping and our checkpoint code see the same object. A wrapped
layer's keys become `<base>.base_layer.weight` plus `<base>.lora_A/B.default.weight`; `merge_lora` folds
the adapters back and restores the base keys exactly.
"""

from __future__ import annotations

import json
import logging
import os
from collections import defaultdict
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model, set_peft_model_state_dict
from peft.tuners.lora import LoraLayer
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from model_zoo.files import write_dir_atomically
from model_zoo.lora_settings import LoraSettings

logger = logging.getLogger(__name__)

ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors"  # peft's file names
ADAPTER_CONFIG_NAME = "adapter_config.json"
NON_LORA_WEIGHTS_NAME = "non_lora_weights.safetensors"  # fully trainable modules, base key names
SETTINGS_NAME = "vla_sft_lora.json"
_PEFT_PREFIX = "base_model.model."  # what PeftModel.save_pretrained puts in front of adapter keys

_PALIGEMMA = r"paligemma_with_expert\.paligemma"
_SIGLIP_BLOCKS = rf"{_PALIGEMMA}\.model\.vision_tower\.vision_model\.encoder\.layers\.\d+"
_VLM_BLOCKS = rf"{_PALIGEMMA}\.model\.language_model\.layers\.\d+"
_EXPERT_BLOCKS = r"paligemma_with_expert\.gemma_expert\.model\.layers\.\d+"
_GEMMA_LINEARS = r"(self_attn\.[qkvo]_proj|mlp\.(gate|up|down)_proj)"
_SIGLIP_LINEARS = r"(self_attn\.(q|k|v|out)_proj|mlp\.fc[12])"
# peft full-matches these against module names (a string target_modules is treated as a regex).
TARGET_REGEX = {
    "rlinf": rf"({_SIGLIP_BLOCKS}\.{_SIGLIP_LINEARS}|{_VLM_BLOCKS}\.{_GEMMA_LINEARS})",
    "openpi": rf"({_VLM_BLOCKS}|{_EXPERT_BLOCKS})\.{_GEMMA_LINEARS}",
}
_EXPERT = "paligemma_with_expert.gemma_expert"
_VISION = "paligemma_with_expert.paligemma.model.vision_tower"
_PROJECTOR = "paligemma_with_expert.paligemma.model.multi_modal_projector"


def fully_trainable_prefixes(model: nn.Module, preset: str) -> list[str]:
    """Module names whose parameters all stay trainable (no adapters) under `preset`."""
    # Heads = every top-level module besides the two transformer stacks (action_in/out_proj, state_proj,
    # time MLPs), found by name so a pi0 and a pi0.5 model both work.
    heads = [
        name
        for name, child in model.named_children()
        if name != "paligemma_with_expert" and next(child.parameters(), None) is not None
    ]
    if preset == "rlinf":
        return [_EXPERT, _PROJECTOR, *heads]
    return [_VISION, _PROJECTOR, *heads]


def _under(name: str, prefixes: list[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def is_lora_param(name: str) -> bool:
    """True for adapter parameters (`...lora_A.default.weight`, `...lora_B...`)."""
    return any(part.startswith("lora_") for part in name.split("."))


def unused_modules(model: nn.Module) -> list[str]:
    """Modules whose weights never reach the loss or the actions (no adapters there, kept frozen)."""
    unused = getattr(model, "unused_parameter_names", list)()
    return sorted({name.rpartition(".")[0] for name in unused})


def apply_lora(model: nn.Module, settings: LoraSettings) -> nn.Module:
    """Inject LoRA adapters into `model` in place and set which parameters train.

    Trainable afterwards: the adapters and the preset's fully trainable modules; every other parameter
    is frozen (this overrides the model's freeze_* flags, which are meant for full fine-tuning).

    Returns:
        The same model object (still a `Pi0Model`), with `peft_config` and `lora_settings` attributes.
    """
    if hasattr(model, "peft_config"):
        raise ValueError("The model already carries LoRA adapters")
    config = LoraConfig(
        r=settings.rank,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=TARGET_REGEX[settings.preset],
        exclude_modules=unused_modules(model) or None,
        bias="none",
    )
    frozen = set(getattr(model, "unused_parameter_names", list)())
    inject_adapter_in_model(config, model)
    full = fully_trainable_prefixes(model, settings.preset)
    for name, param in model.named_parameters():
        param.requires_grad_((is_lora_param(name) or _under(name, full)) and name not in frozen)
    model.lora_settings = settings
    return model


def trainable_summary(model: nn.Module) -> dict:
    """Parameter counts (tied tensors once) and the largest modules that train in full.

    Returns:
        {"trainable": int, "total": int, "lora": int, "full_trainable_modules": [module names]}.
    """
    total = trainable = lora = 0
    flags: dict[str, bool] = {}  # param name -> trains in full (trainable and not an adapter)
    for name, param in model.named_parameters():
        total += param.numel()
        trainable += param.numel() if param.requires_grad else 0
        lora += param.numel() if is_lora_param(name) else 0
        flags[name] = param.requires_grad and not is_lora_param(name)
    full: set[str] = set()
    for module_name, module in model.named_modules():
        names = [f"{module_name}.{n}" if module_name else n for n, _ in module.named_parameters()]
        if module_name and names and all(flags.get(n, False) for n in names):
            full.add(module_name)
    outermost = sorted(m for m in full if not any(m.startswith(p + ".") for p in full))
    return {"trainable": trainable, "total": total, "lora": lora, "full_trainable_modules": outermost}


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold the adapters into the base weights, in place; the model gets its base keys back.

    Returns:
        The same object as a plain model: no `peft_config`, and every parameter trainable except the
        unused ones the model itself freezes.
    """
    if not hasattr(model, "peft_config"):
        raise ValueError("The model carries no LoRA adapters to merge")
    shared = defaultdict(int)
    for _, param in model.named_parameters(remove_duplicate=False):
        shared[id(param)] += 1
    for name, module in list(model.named_modules()):
        if not isinstance(module, LoraLayer):
            continue
        base = module.get_base_layer()
        if shared[id(base.weight)] > 1:
            # Merging would also change the tied partner (e.g. lm_head <-> embed_tokens).
            raise ValueError(f"Cannot merge LoRA into {name}: its weight is tied to another module")
        module.merge(safe_merge=True)  # safe_merge: refuse NaN/inf instead of corrupting the weight
        parent_name, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent_name), attr, base)
    del model.peft_config
    if hasattr(model, "lora_settings"):
        del model.lora_settings
    frozen = set(getattr(model, "unused_parameter_names", list)())
    for name, param in model.named_parameters():
        param.requires_grad_(name not in frozen)
    return model


def save_adapter(model: nn.Module, out_dir: str | os.PathLike) -> Path:
    """Write the adapter in peft's format plus the fully trainable non-LoRA weights (atomically).

    Files: `adapter_model.safetensors` + `adapter_config.json` (loadable by `peft.PeftModel.from_pretrained`
    on a base `Pi0Model`), `non_lora_weights.safetensors` (base key names) and `vla_sft_lora.json`
    (settings and the model config, read back by `load_adapter`).
    """
    settings: LoraSettings | None = getattr(model, "lora_settings", None)
    if settings is None or not hasattr(model, "peft_config"):
        raise ValueError("The model carries no LoRA adapters (call apply_lora first)")
    adapter = get_peft_model_state_dict(model, save_embedding_layers=False)
    full = fully_trainable_prefixes(model, settings.preset)
    non_lora = {n: p for n, p in model.state_dict().items() if _under(n, full) and not is_lora_param(n)}
    model_config = getattr(model, "config", None)
    meta = {
        "settings": settings.to_dict(),
        "fully_trainable_modules": full,
        "model_config": model_config.to_dict() if hasattr(model_config, "to_dict") else None,
    }

    def write(folder: Path) -> None:
        tensors = {_PEFT_PREFIX + k: v.detach().contiguous().cpu() for k, v in adapter.items()}
        save_file(tensors, str(folder / ADAPTER_WEIGHTS_NAME), metadata={"format": "pt"})
        model.peft_config["default"].save_pretrained(str(folder))
        non_lora_cpu = {k: v.detach().contiguous().cpu() for k, v in non_lora.items()}
        save_file(non_lora_cpu, str(folder / NON_LORA_WEIGHTS_NAME), metadata={"format": "pt"})
        (folder / SETTINGS_NAME).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")

    return write_dir_atomically(out_dir, write)


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), framework="pt", device="cpu") as handle:
        return {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118 - not a mapping


def load_adapter(base_model: nn.Module, adapter_dir: str | os.PathLike) -> nn.Module:
    """Apply LoRA to `base_model` (in place) and load an adapter written by `save_adapter`.

    Every adapter tensor and every fully trainable tensor must be present with the right shape.

    Raises:
        ValueError: missing files, a model config that differs from the one the adapter was trained on,
            or missing / mismatched tensors.
    """
    folder = Path(adapter_dir)
    for name in (SETTINGS_NAME, ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME, NON_LORA_WEIGHTS_NAME):
        if not (folder / name).is_file():
            raise ValueError(f"{folder} is not an adapter folder written by save_adapter: {name} is missing")
    meta = json.loads((folder / SETTINGS_NAME).read_text())
    model_config = getattr(base_model, "config", None)
    saved_config = meta.get("model_config")
    if (
        saved_config is not None
        and hasattr(model_config, "to_dict")
        and model_config.to_dict() != saved_config
    ):
        changed = sorted(k for k in saved_config if saved_config[k] != model_config.to_dict().get(k))
        raise ValueError(f"Adapter in {folder} was trained on a model config that differs in {changed}")
    settings = LoraSettings(**meta["settings"])
    peft_config = LoraConfig.from_pretrained(str(folder))
    if peft_config.target_modules != TARGET_REGEX[settings.preset]:
        raise ValueError(
            f"{folder / ADAPTER_CONFIG_NAME}: target_modules differ from preset {settings.preset!r}"
        )
    apply_lora(base_model, settings)

    adapter = {
        k.removeprefix(_PEFT_PREFIX): v for k, v in _read_safetensors(folder / ADAPTER_WEIGHTS_NAME).items()
    }
    expected = {n.replace(".default.", ".") for n, _ in base_model.named_parameters() if is_lora_param(n)}
    _check_complete(folder / ADAPTER_WEIGHTS_NAME, expected, set(adapter))
    result = set_peft_model_state_dict(base_model, adapter)
    if result.unexpected_keys:
        raise ValueError(f"{folder / ADAPTER_WEIGHTS_NAME}: unexpected keys {result.unexpected_keys[:5]}")

    non_lora = _read_safetensors(folder / NON_LORA_WEIGHTS_NAME)
    full = fully_trainable_prefixes(base_model, settings.preset)
    targets = {n: t for n, t in base_model.state_dict().items() if _under(n, full) and not is_lora_param(n)}
    _check_complete(folder / NON_LORA_WEIGHTS_NAME, set(targets), set(non_lora))
    wrong = [k for k, v in non_lora.items() if v.shape != targets[k].shape]
    if wrong:
        raise ValueError(f"{folder / NON_LORA_WEIGHTS_NAME}: wrong shape for {wrong[:5]}")
    base_model.load_state_dict(
        {k: v.to(targets[k].dtype) for k, v in non_lora.items()}, strict=False, assign=False
    )
    return base_model


def _check_complete(path: Path, expected: set[str], found: set[str]) -> None:
    missing, extra = sorted(expected - found), sorted(found - expected)
    if missing or extra:
        raise ValueError(
            f"{path}: {len(missing)} missing tensor(s) {missing[:5]}, {len(extra)} unexpected {extra[:5]}"
        )
