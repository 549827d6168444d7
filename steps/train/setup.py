"""Setup pieces of ``steps.train.trainer``: input checks, model construction, resume compatibility, FLOP counts.

Every check runs before the first training step and names the offending ``TrainConfig`` field. torch and
the model are imported inside the functions (the flow imports ``steps.train.trainer`` at the top level).
"""

from __future__ import annotations

import json
from pathlib import Path

from steps.train.config import TrainConfig

# Peak dense bf16 FLOP/s per GPU for MFU (H100/H200 SXM: 989 TFLOP/s; A100: 312).
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


def flops_per_sample(model, *, trainable_towers: dict[str, bool]) -> float:
    """Approximate training FLOPs per sample: 2 x params x tokens per tower, x3 if the tower's weights
    train (forward + input grads + weight grads) else x2. Attention scores are left out (< ~10%)."""
    cfg = model.config
    image_tokens = 3 * cfg.siglip.num_patches
    prefix = image_tokens + cfg.max_token_len
    suffix = cfg.action_horizon + (0 if cfg.pi05 else 1)
    tokens = {"vision": 3 * cfg.siglip.num_patches, "vlm": prefix, "expert": suffix}
    counts = tower_param_counts(model)
    total = 0.0
    for tower, n in counts.items():
        mult = 3.0 if trainable_towers.get(tower, True) else 2.0
        total += mult * 2.0 * n * tokens[tower]
    return total


def tower_param_counts(model) -> dict[str, int]:
    counts = {"vision": 0, "vlm": 0, "expert": 0}
    seen = set()
    for name, p in model.named_parameters():
        if id(p) in seen or "embed_tokens" in name or "lm_head" in name:
            continue  # embeddings are lookups, not matmuls
        seen.add(id(p))
        if "vision_tower" in name or "multi_modal_projector" in name:
            counts["vision"] += p.numel()
        elif "language_model" in name:
            counts["vlm"] += p.numel()
        else:
            counts["expert"] += p.numel()  # the expert and the action/time heads run on suffix tokens
    return counts


def peak_flops(device) -> float | None:
    import torch

    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)


def default_export_dir(cfg: TrainConfig) -> str:
    if cfg.checkpoint_dir.startswith("s3://"):
        import tempfile

        return tempfile.mkdtemp(prefix="vla-sft-export-")
    return str(Path(cfg.checkpoint_dir) / "export")


def check_inputs(cfg: TrainConfig, ct):
    """Dataset schema, norm stats dims and tokenizer, checked before the model is built."""
    from data_adapters.config_types import validate_against_dataset
    from data_adapters.lerobot_format import INFO_PATH
    from data_adapters.normalization import NormStats
    from data_adapters.tokenizer import PromptTokenizer

    info_path = Path(cfg.dataset_root) / INFO_PATH
    if not info_path.is_file():
        raise ValueError(f"dataset_root: {cfg.dataset_root} is not a LeRobot dataset (no {INFO_PATH})")
    try:
        validate_against_dataset(ct, json.loads(info_path.read_text()))
    except ValueError as exc:
        raise ValueError(
            f"dataset_root: {cfg.dataset_root} does not match config type {ct.name!r}: {exc}"
        ) from exc
    if not Path(cfg.norm_stats_path).is_file():
        raise ValueError(
            f"norm_stats_path: {cfg.norm_stats_path} does not exist (run steps.stats.norm_stats first)"
        )
    try:
        stats = NormStats.load(cfg.norm_stats_path)
    except (ValueError, KeyError) as exc:
        raise ValueError(f"norm_stats_path: {cfg.norm_stats_path} cannot be read: {exc}") from exc
    for name, s, dim in (("state", stats.state, ct.state_dim), ("actions", stats.actions, ct.action_dim)):
        if s.dim != dim:
            raise ValueError(
                f"norm_stats_path: {cfg.norm_stats_path} has {s.dim} {name} dims but the dataset / config type "
                f"{ct.name!r} has {dim}; recompute the statistics for this dataset"
            )
    if not Path(cfg.tokenizer_path).is_file():
        raise ValueError(f"tokenizer_path: {cfg.tokenizer_path} does not exist")
    tokenizer = PromptTokenizer(cfg.tokenizer_path, ct.max_token_len)
    from model_zoo.config import MODEL_BUNDLES

    vocab = MODEL_BUNDLES[cfg.model_variant].vocab_size
    if tokenizer.vocab_size > vocab:
        raise ValueError(f"tokenizer_path: vocabulary of {tokenizer.vocab_size} tokens exceeds model_variant "
                         f"{cfg.model_variant!r}'s {vocab}")  # fmt: skip
    if cfg.pretrained is None and cfg.model_variant == "real" and cfg.lora is not None:
        raise ValueError("pretrained: LoRA on a randomly initialised real-size model makes no sense; "
                         "pass pretrained weights")  # fmt: skip
    return stats, tokenizer


def build_model(cfg: TrainConfig, ct, precision: str, *, load_weights: bool = True):
    """Pi0Model from the config type and variant; pretrained weights; LoRA adapters."""
    import torch

    from model_zoo.checkpoint import CheckpointError, load_pretrained
    from model_zoo.config import ModelConfig
    from model_zoo.pi0 import Pi0Model

    model_config = ModelConfig(
        model_type=ct.model_type, variant=cfg.model_variant, action_horizon=ct.action_horizon,
        max_token_len=ct.max_token_len, dtype="bfloat16" if precision == "bf16" else "float32",
        gradient_checkpointing=cfg.gradient_checkpointing,
    )  # fmt: skip
    if load_weights and cfg.pretrained is not None:
        # Strict loading replaces every tensor: build on the meta device and let the load put the weights in
        # place, instead of a random init thrown away and a second full copy (benchmarks/bench_model_build.py,
        # real size on 2 CPU cores: 60 s -> 4 s, peak RSS 20 GB -> the checkpoint's pages, mapped copy-on-write).
        with torch.device("meta"):
            model = Pi0Model(model_config)
        try:
            load_pretrained(model, cfg.pretrained, revision=cfg.pretrained_revision, strict=True)
        except CheckpointError as exc:
            # Still a CheckpointError (a user error, shown as one line), now naming the option.
            raise CheckpointError(f"pretrained: {cfg.pretrained} does not fit model {ct.model_type}/{cfg.model_variant}: "
                                  f"{exc}") from exc  # fmt: skip
    else:
        model = Pi0Model(model_config)
    if cfg.lora is not None:
        from model_zoo.lora import apply_lora  # imports peft (seconds): only when needed

        apply_lora(model, cfg.lora)
    model.train()
    return model


def trainable_towers(model) -> dict[str, bool]:
    """Whether any weight of each tower trains (LoRA freezes whole towers' base weights)."""
    out = {"vision": False, "vlm": False, "expert": False}
    for name, p in model.named_parameters():
        if not p.requires_grad or "lora_" in name:
            continue
        tower = ("vision" if "vision_tower" in name or "multi_modal_projector" in name
                 else "vlm" if "language_model" in name else "expert")  # fmt: skip
        out[tower] = True
    return out


# Fields that define the model or the checkpoint format: a checkpoint written with other values
# cannot be resumed. Others (seed, batch, lr) only warn, as torchtune's recipes do.
_RESUME_MUST_MATCH = ("config_type", "model_variant", "lora", "parallelism")
_RESUME_WARN = ("seed", "global_batch", "peak_lr", "schedule", "loss_reduction", "train_episodes")


def check_resume_config(cfg: TrainConfig, saved: dict, step: int) -> None:
    import warnings

    current = cfg.to_dict()
    for name in _RESUME_MUST_MATCH:
        if saved.get(name) != current[name]:
            raise ValueError(
                f"checkpoint_dir: {cfg.checkpoint_dir} holds a checkpoint (step {step}) from a different model: "
                f"{name} was {saved.get(name)!r}, this run has {current[name]!r}; use a new checkpoint_dir"
            )
    for name in _RESUME_WARN:
        old, new = saved.get(name), current[name]  # both plain JSON values
        if old != new:
            warnings.warn(f"resuming step {step} with {name}={new!r} (checkpoint had {old!r}): the run will not "
                          "repeat the uninterrupted one exactly", stacklevel=2)  # fmt: skip
