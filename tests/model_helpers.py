"""Shared helpers for the model tests: golden inputs/weights and random tiny batches."""

from __future__ import annotations

import zlib
from pathlib import Path

import torch
from safetensors.torch import load_file

from model_zoo.config import CAMERA_SLOTS, ModelConfig
from model_zoo.pi0 import Pi0Model

REFERENCE_DIR = Path(__file__).resolve().parent / "reference"  # openpi key lists, golden outputs
GOLDEN_DIR = REFERENCE_DIR / "golden"
EMBED_KEY = "paligemma_with_expert.paligemma.model.language_model.embed_tokens.weight"
TIED_HEAD_KEY = "paligemma_with_expert.paligemma.lm_head.weight"
EXPERT_LM_HEAD_KEY = "paligemma_with_expert.gemma_expert.lm_head.weight"


def golden_config(model_type: str, **changes) -> ModelConfig:
    return ModelConfig(
        model_type=model_type, variant="golden", action_horizon=10, max_token_len=16, **changes
    )


def golden_value(key: str, shape) -> torch.Tensor:
    """The golden README's weight rule: seed = crc32(key), randn * 0.05, float32."""
    generator = torch.Generator().manual_seed(zlib.crc32(key.encode("utf-8")))
    return torch.randn(tuple(shape), generator=generator, dtype=torch.float32) * 0.05


def golden_state_dict(model: Pi0Model) -> dict[str, torch.Tensor]:
    """Weights for every key of `model.state_dict()`; the tied lm_head gets embed_tokens' value."""
    return {
        key: golden_value(EMBED_KEY if key == TIED_HEAD_KEY else key, tensor.shape)
        for key, tensor in model.state_dict().items()
    }


def golden_inputs() -> dict[str, torch.Tensor]:
    # .clone(): the README notes that unaligned tensors from load_file can change results in the last bit.
    return {k: v.clone() for k, v in load_file(GOLDEN_DIR / "inputs.safetensors").items()}


def golden_batch(inputs: dict[str, torch.Tensor]) -> dict:
    return {
        "images": {s: inputs[f"image.{s}"] for s in CAMERA_SLOTS},
        "image_masks": {s: inputs[f"image_mask.{s}"] for s in CAMERA_SLOTS},
        "state": inputs["state"],
        "tokens": inputs["tokenized_prompt"],
        "token_mask": inputs["tokenized_prompt_mask"],
        "actions": inputs["actions"],
        "action_is_pad": torch.zeros(inputs["actions"].shape[:2], dtype=torch.bool),
    }


def tiny_config(model_type: str, **changes) -> ModelConfig:
    changes.setdefault("action_horizon", 4)
    changes.setdefault("max_token_len", 8)
    return ModelConfig(model_type=model_type, variant="tiny", **changes)


def random_batch(config: ModelConfig, batch_size: int = 2, seed: int = 0, padded: bool = True) -> dict:
    """A model-input batch (the contract documented on ``Pi0Model``). With `padded`, sample 1 lacks a camera and half its text."""
    g = torch.Generator().manual_seed(seed)
    size = config.siglip.image_size
    length, dim = config.max_token_len, config.action_dim
    token_mask = torch.ones(batch_size, length, dtype=torch.bool)
    image_masks = {s: torch.ones(batch_size, dtype=torch.bool) for s in CAMERA_SLOTS}
    if padded and batch_size > 1:
        token_mask[1, length // 2 :] = False
        image_masks["left_wrist_0_rgb"][1] = False
    tokens = torch.randint(1, config.vocab_size, (batch_size, length), generator=g)
    return {
        "images": {s: torch.rand(batch_size, 3, size, size, generator=g) * 2 - 1 for s in CAMERA_SLOTS},
        "image_masks": image_masks,
        "state": torch.randn(batch_size, dim, generator=g),
        "tokens": tokens.masked_fill(~token_mask, 0),
        "token_mask": token_mask,
        "actions": torch.randn(batch_size, config.action_horizon, dim, generator=g),
        "action_is_pad": torch.zeros(batch_size, config.action_horizon, dtype=torch.bool),
    }


def seeded_model(config: ModelConfig, seed: int = 0, scale: float = 0.05) -> Pi0Model:
    """A model whose every weight (norms and adaRMS included) is random, so no path is a no-op."""
    torch.manual_seed(seed)
    model = Pi0Model(config)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn_like(param) * scale)
    return model
