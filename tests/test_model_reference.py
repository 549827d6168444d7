"""Our SigLIP tower and Gemma stack against transformers' SiglipVisionModel / GemmaModel (same weights).

Convention differences accounted for here: HF's Gemma scales token embeddings by sqrt(width) inside its
embedding (transformers 5; in 4.x inside GemmaModel), ours leaves the scaling to the pi0 prefix; HF's
default mask is causal with positions 0..S-1.
"""

from __future__ import annotations

import math

import pytest
import torch
from transformers import GemmaConfig, GemmaModel, SiglipVisionConfig, SiglipVisionModel

from model_zoo.config import GEMMA_VARIANTS, SIGLIP_VARIANTS
from model_zoo.gemma import GemmaDecoder, RMSNorm
from model_zoo.joint_transformer import additive_mask, make_attention_mask_2d
from model_zoo.siglip import SiglipVisionTower

TOL = 1e-5


def randomize(module: torch.nn.Module, seed: int) -> None:
    """Random values everywhere (norm weights too), so no parameter is silently ignored."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)


def test_siglip_tower_matches_transformers():
    variant = SIGLIP_VARIANTS["tiny"]
    hf = SiglipVisionModel(
        SiglipVisionConfig(
            hidden_size=variant.width,
            intermediate_size=variant.mlp_dim,
            num_hidden_layers=variant.depth,
            num_attention_heads=variant.num_heads,
            image_size=variant.image_size,
            patch_size=variant.patch_size,
            hidden_act="gelu_pytorch_tanh",
            layer_norm_eps=1e-6,
            vision_use_head=False,
        )
    ).eval()
    randomize(hf, seed=1)
    ours = SiglipVisionTower(variant).eval()
    # transformers 5 keeps the tower at the top level; 4.x nests it under `vision_model`.
    ours.vision_model.load_state_dict(getattr(hf, "vision_model", hf).state_dict(), strict=True)
    pixels = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(2)) * 2 - 1
    with torch.no_grad():
        expected = hf(pixel_values=pixels).last_hidden_state
        got = ours(pixels)
    assert got.shape == (2, 256, variant.width)
    assert (got - expected).abs().max().item() < TOL


def _hf_gemma(variant, vocab: int) -> GemmaModel:
    config = GemmaConfig(
        vocab_size=vocab,
        hidden_size=variant.width,
        intermediate_size=variant.mlp_dim,
        num_hidden_layers=variant.depth,
        num_attention_heads=variant.num_heads,
        num_key_value_heads=variant.num_kv_heads,
        head_dim=variant.head_dim,
        hidden_activation="gelu_pytorch_tanh",
        rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        attention_bias=False,
    )
    return GemmaModel(config).eval()


@pytest.mark.parametrize("name", ["dummy", "dummy_expert"])
def test_gemma_decoder_matches_transformers(name):
    variant = GEMMA_VARIANTS[name]
    hf = _hf_gemma(variant, vocab=128)
    randomize(hf, seed=3)
    ours = GemmaDecoder(variant, vocab_size=128).eval()
    ours.load_state_dict(hf.state_dict(), strict=True)
    batch, seq = 2, 12
    ids = torch.randint(0, 128, (batch, seq), generator=torch.Generator().manual_seed(4))
    # Causal mask via our prefix-LM builder: every token starts a new block.
    valid = torch.ones(batch, seq, dtype=torch.bool)
    mask = additive_mask(make_attention_mask_2d(valid, valid))
    positions = torch.arange(seq)[None].expand(batch, seq)
    with torch.no_grad():
        expected = hf(input_ids=ids).last_hidden_state
        got = ours(ours.embed_tokens(ids) * math.sqrt(variant.width), positions, mask)
    assert (got - expected).abs().max().item() < TOL


def test_rmsnorm_matches_transformers():
    from transformers.models.gemma.modeling_gemma import GemmaRMSNorm

    hf = GemmaRMSNorm(16, eps=1e-6)
    ours = RMSNorm(16)
    randomize(hf, seed=5)
    ours.load_state_dict(hf.state_dict())
    x = torch.randn(3, 5, 16)
    assert torch.allclose(ours(x)[0], hf(x), atol=1e-6)
