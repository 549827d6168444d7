"""SigLIP vision tower (no pooling head), with Hugging Face `SiglipVisionModel` attribute names.

Pre-LN ViT: patch Conv2d (stride = patch), learned position embedding, `depth` encoder layers, final
`post_layernorm`. Input pixels are in [-1, 1], channels first. The patch and position embeddings always
run in float32 (openpi keeps them fp32 in bf16 mode); LayerNorm runs in float32 under autocast anyway.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from model_zoo.config import SiglipVariant

LAYER_NORM_EPS = 1e-6


class SiglipEmbeddings(nn.Module):
    def __init__(self, variant: SiglipVariant):
        super().__init__()
        self.patch_size = variant.patch_size
        self.image_size = variant.image_size
        self.patch_embedding = nn.Conv2d(3, variant.width, variant.patch_size, stride=variant.patch_size)
        self.position_embedding = nn.Embedding(variant.num_patches, variant.width)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels [N, 3, H, W] -> tokens [N, num_patches, width] (float32)."""
        if pixels.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(
                f"images must be {self.image_size}x{self.image_size}, got {tuple(pixels.shape[-2:])}"
            )
        with torch.autocast(device_type=pixels.device.type, enabled=False):
            patches = self.patch_embedding(pixels.to(self.patch_embedding.weight.dtype))
            tokens = patches.flatten(2).transpose(1, 2)
            return tokens + self.position_embedding.weight[None]


class SiglipAttention(nn.Module):
    def __init__(self, variant: SiglipVariant):
        super().__init__()
        self.num_heads = variant.num_heads
        self.head_dim = variant.width // variant.num_heads
        # Registration order k, v, q, out matches the reference state dict.
        self.k_proj = nn.Linear(variant.width, variant.width)
        self.v_proj = nn.Linear(variant.width, variant.width)
        self.q_proj = nn.Linear(variant.width, variant.width)
        self.out_proj = nn.Linear(variant.width, variant.width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, seq, width = x.shape

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(batch, seq, self.num_heads, self.head_dim).transpose(1, 2)

        q, k, v = heads(self.q_proj(x)), heads(self.k_proj(x)), heads(self.v_proj(x))
        out = F.scaled_dot_product_attention(q, k, v, scale=self.head_dim**-0.5)
        return self.out_proj(out.transpose(1, 2).reshape(batch, seq, width))


class SiglipMLP(nn.Module):
    def __init__(self, variant: SiglipVariant):
        super().__init__()
        self.fc1 = nn.Linear(variant.width, variant.mlp_dim)
        self.fc2 = nn.Linear(variant.mlp_dim, variant.width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class SiglipEncoderLayer(nn.Module):
    def __init__(self, variant: SiglipVariant):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(variant.width, eps=LAYER_NORM_EPS)
        self.self_attn = SiglipAttention(variant)
        self.layer_norm2 = nn.LayerNorm(variant.width, eps=LAYER_NORM_EPS)
        self.mlp = SiglipMLP(variant)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Residual stream stays float32 under autocast: the bf16 branch output is added to fp32 x.
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class SiglipEncoder(nn.Module):
    def __init__(self, variant: SiglipVariant):
        super().__init__()
        self.layers = nn.ModuleList(SiglipEncoderLayer(variant) for _ in range(variant.depth))
        self.gradient_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        recompute = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        for layer in self.layers:
            x = checkpoint(layer, x, use_reentrant=False) if recompute else layer(x)
        return x


class SiglipVisionTransformer(nn.Module):
    def __init__(self, variant: SiglipVariant):
        super().__init__()
        self.embeddings = SiglipEmbeddings(variant)
        self.encoder = SiglipEncoder(variant)
        self.post_layernorm = nn.LayerNorm(variant.width, eps=LAYER_NORM_EPS)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.post_layernorm(self.encoder(self.embeddings(pixels)))


class SiglipVisionTower(nn.Module):
    """Wrapper that gives the `vision_tower.vision_model.*` key prefix; returns the last hidden state."""

    def __init__(self, variant: SiglipVariant):
        super().__init__()
        self.vision_model = SiglipVisionTransformer(variant)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.vision_model(pixels)
