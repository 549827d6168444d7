"""Gemma decoder pieces: RMSNorm (plain and adaRMS), RoPE, grouped-query attention, gated GELU MLP.

Attribute names follow Hugging Face's Gemma (`self_attn.q_proj`, `mlp.gate_proj`, `input_layernorm`, ...)
so that state-dict keys equal openpi's. Conventions that differ from a textbook transformer:

- RMSNorm scales by ``1 + weight`` (weight initialised to 0) and is computed in float32.
- The action expert of pi0.5 replaces the norm weight by adaRMS: a ``dense`` Linear maps the time
  conditioning to (scale, shift, gate); the gate multiplies the branch before the residual add.
- RoPE uses the rotate-half layout with theta 10000; attention has no bias; scale is head_dim**-0.5.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from model_zoo.config import GemmaVariant

ROPE_THETA = 10_000.0
RMS_EPS = 1e-6

# (key, value) of one layer, after RoPE, shape [B, num_kv_heads, S, head_dim].
KeyValue = tuple[torch.Tensor, torch.Tensor]


def _rms_normalize(x: torch.Tensor, eps: float) -> torch.Tensor:
    x = x.float()
    return x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + eps)


class RMSNorm(nn.Module):
    """Gemma RMSNorm: ``norm(x) * (1 + weight)`` in float32, cast back to the input dtype."""

    def __init__(self, dim: int, eps: float = RMS_EPS):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> tuple[torch.Tensor, None]:
        """Returns (normalized x, gate=None); `cond` is accepted for a uniform interface and ignored."""
        out = _rms_normalize(x, self.eps) * (1.0 + self.weight.float())
        return out.to(x.dtype), None


class AdaRMSNorm(nn.Module):
    """Adaptive RMSNorm (pi0.5 action expert): conditioning -> (scale, shift, gate), no weight parameter.

    ``dense`` starts with a zero weight, so at initialisation scale/shift/gate come from the bias only.
    It runs in float32 (outside autocast) like every norm.
    """

    def __init__(self, dim: int, cond_dim: int, eps: float = RMS_EPS):
        super().__init__()
        self.eps = eps
        self.dense = nn.Linear(cond_dim, 3 * dim)
        nn.init.zeros_(self.dense.weight)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if cond is None:
            raise ValueError("AdaRMSNorm needs the time conditioning `cond` (pi0.5 action expert)")
        with torch.autocast(device_type=x.device.type, enabled=False):
            modulation = self.dense(cond.to(self.dense.weight.dtype)).float()
        if x.dim() == 3:  # one conditioning vector per sample, broadcast over the sequence
            modulation = modulation[:, None, :]
        scale, shift, gate = modulation.chunk(3, dim=-1)
        out = _rms_normalize(x, self.eps) * (1.0 + scale) + shift
        return out.to(x.dtype), gate.to(x.dtype)


def rope_cos_sin(positions: torch.Tensor, head_dim: int, theta: float = ROPE_THETA) -> KeyValue:
    """cos/sin tables for integer positions [B, S] -> each [B, 1, S, head_dim], float32."""
    exponent = torch.arange(0, head_dim, 2, dtype=torch.int64, device=positions.device).float() / head_dim
    inv_freq = 1.0 / (theta**exponent)
    with torch.autocast(device_type=positions.device.type, enabled=False):
        freqs = positions.float()[..., None] * inv_freq  # [B, S, head_dim/2]
    angles = torch.cat([freqs, freqs], dim=-1)[:, None]
    return angles.cos(), angles.sin()


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat([-second, first], dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE on [B, heads, S, head_dim]; the result keeps x's dtype."""
    return (x * cos + _rotate_half(x) * sin).to(x.dtype)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Grouped-query attention. q [B, H, Sq, D]; k, v [B, KV, Sk, D]; mask additive [B, 1, Sq, Sk].

    Returns [B, Sq, H * D]. The mask is additive and finite (not boolean) so that fully masked rows
    (padding queries) give a uniform softmax instead of NaN; their outputs are never read.
    """
    batch, heads, seq, head_dim = q.shape
    kv_heads = k.shape[1]
    if kv_heads != heads:
        if kv_heads == 1:  # a broadcast view, no copy
            k = k.expand(batch, heads, *k.shape[2:])
            v = v.expand(batch, heads, *v.shape[2:])
        else:
            k = k.repeat_interleave(heads // kv_heads, dim=1)
            v = v.repeat_interleave(heads // kv_heads, dim=1)
    if mask is not None:
        mask = mask.to(q.dtype)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=head_dim**-0.5)
    return out.transpose(1, 2).reshape(batch, seq, heads * head_dim)


class GemmaAttention(nn.Module):
    """q/k/v/o projections (no bias). Attention itself is a function so that two experts can share it."""

    def __init__(self, width: int, num_heads: int, num_kv_heads: int, head_dim: int):
        super().__init__()
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.q_proj = nn.Linear(width, num_heads * head_dim, bias=False)
        self.k_proj = nn.Linear(width, num_kv_heads * head_dim, bias=False)
        self.v_proj = nn.Linear(width, num_kv_heads * head_dim, bias=False)
        self.o_proj = nn.Linear(num_heads * head_dim, width, bias=False)

    def _heads(self, x: torch.Tensor, n: int) -> torch.Tensor:
        return x.view(*x.shape[:-1], n, self.head_dim).transpose(1, 2)

    def project_kv(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> KeyValue:
        k = apply_rope(self._heads(self.k_proj(x), self.num_kv_heads), cos, sin)
        return k, self._heads(self.v_proj(x), self.num_kv_heads)

    def project_q(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        return apply_rope(self._heads(self.q_proj(x), self.num_heads), cos, sin)


class GemmaMLP(nn.Module):
    """down(gelu_tanh(gate(x)) * up(x))."""

    def __init__(self, width: int, mlp_dim: int):
        super().__init__()
        self.gate_proj = nn.Linear(width, mlp_dim, bias=False)
        self.up_proj = nn.Linear(width, mlp_dim, bias=False)
        self.down_proj = nn.Linear(mlp_dim, width, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.gelu(self.gate_proj(x), approximate="tanh") * self.up_proj(x))


def _gated_residual(x: torch.Tensor, y: torch.Tensor, gate: torch.Tensor | None) -> torch.Tensor:
    return x + y if gate is None else x + y * gate


class GemmaDecoderLayer(nn.Module):
    """One pre-norm decoder layer whose attention may also read keys/values from outside (`past_kv`).

    The joint pi0 stack runs the VLM layer on the prefix first, then the expert layer on the suffix with
    the VLM layer's K/V prepended. Every layer is called once per pass through `forward`, so FSDP2
    `fully_shard` per layer and per-layer activation checkpointing work without special cases.
    """

    def __init__(self, variant: GemmaVariant, cond_dim: int | None = None):
        super().__init__()
        self.self_attn = GemmaAttention(
            variant.width, variant.num_heads, variant.num_kv_heads, variant.head_dim
        )
        self.mlp = GemmaMLP(variant.width, variant.mlp_dim)
        # Registered after self_attn / mlp so that state_dict order matches openpi's.
        if cond_dim is None:
            self.input_layernorm = RMSNorm(variant.width)
            self.post_attention_layernorm = RMSNorm(variant.width)
        else:
            self.input_layernorm = AdaRMSNorm(variant.width, cond_dim)
            self.post_attention_layernorm = AdaRMSNorm(variant.width, cond_dim)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor | None,
        cond: torch.Tensor | None = None,
        past_kv: KeyValue | None = None,
        compute_output: bool = True,
    ) -> tuple[torch.Tensor | None, KeyValue]:
        """x [B, S, W] -> (new x or None, this layer's own (k, v) for S tokens).

        `past_kv` (k, v) of earlier tokens are prepended to this layer's keys/values; `mask` covers
        [past + own] keys. With `compute_output=False` only K/V are computed (used for the last VLM
        layer, whose prefix outputs nothing reads).
        """
        normed, gate = self.input_layernorm(x, cond)
        k, v = self.self_attn.project_kv(normed, cos, sin)
        # v is a view of v_proj's output; FSDP2 warns about module outputs that are views. Tiny copy.
        kv = (k, v.clone())
        if not compute_output:
            return None, kv
        q = self.self_attn.project_q(normed, cos, sin)
        keys, values = kv
        if past_kv is not None:
            keys = torch.cat([past_kv[0], keys], dim=2)
            values = torch.cat([past_kv[1], values], dim=2)
        attn = attention(q, keys, values, mask)
        return self.finish(x, attn, gate, cond), kv

    def finish(
        self, x: torch.Tensor, attn: torch.Tensor, gate: torch.Tensor | None, cond: torch.Tensor | None
    ) -> torch.Tensor:
        """Output projection, gated residual, post-attention norm, MLP, gated residual."""
        x = _gated_residual(x, self.self_attn.o_proj(attn.to(x.dtype)), gate)
        normed, gate = self.post_attention_layernorm(x, cond)
        return _gated_residual(x, self.mlp(normed), gate)


class GemmaDecoder(nn.Module):
    """A Gemma stack: optional token embedding, layers, final norm (HF `GemmaModel` naming).

    `forward` is a plain self-attention pass (used for tests against transformers' GemmaModel); the
    joint two-expert pass lives in `joint_transformer.py`. Embeddings are NOT scaled here: pi0 scales
    text embeddings by sqrt(width) where it builds the prefix.
    """

    def __init__(self, variant: GemmaVariant, vocab_size: int | None = None, cond_dim: int | None = None):
        super().__init__()
        self.variant = variant
        if vocab_size is not None:
            self.embed_tokens = nn.Embedding(vocab_size, variant.width)
        self.layers = nn.ModuleList(GemmaDecoderLayer(variant, cond_dim) for _ in range(variant.depth))
        self.norm = RMSNorm(variant.width) if cond_dim is None else AdaRMSNorm(variant.width, cond_dim)

    def forward(
        self,
        inputs_embeds: torch.Tensor,
        position_ids: torch.Tensor,
        mask: torch.Tensor | None,
        cond: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """inputs_embeds [B, S, W], position_ids [B, S], additive mask [B, 1, S, S] -> normed hidden states."""
        cos, sin = rope_cos_sin(position_ids, self.variant.head_dim)
        hidden = inputs_embeds
        for layer in self.layers:
            hidden, _ = layer(hidden, cos, sin, mask, cond)
        return self.norm(hidden, cond)[0]
