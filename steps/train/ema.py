"""Exponential moving average of the trainable weights, kept in fp32.

openpi keeps an EMA of the parameters for full fine-tuning (decay 0.99, 0.999 for pi05_libero) and
exports it; its PyTorch port dropped it. We keep the shadow copy in fp32 whatever the compute dtype,
next to the fp32 master weights. Under FSDP the parameters are DTensors; ``lerp_`` works on them shard
by shard, so the shadow is sharded the same way and costs 4 bytes per parameter per rank's shard.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


class EMA:
    """Shadow weights ``s <- decay * s + (1 - decay) * p`` for every trainable parameter of ``model``.

    Names are those of ``model.named_parameters()`` on the (possibly wrapped) module given, so the
    same wrapped module must be passed to ``update``/``swap_into``.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema_decay: must be in (0, 1), got {decay}")
        self.decay = decay
        self.shadow: dict[str, torch.Tensor] = {
            name: p.detach().to(torch.float32, copy=True)
            for name, p in model.named_parameters()
            if p.requires_grad
        }

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for name, p in model.named_parameters():
            if name in self.shadow:
                self.shadow[name].lerp_(p.detach().to(torch.float32), 1.0 - self.decay)

    @contextlib.contextmanager
    def swap_into(self, model: nn.Module) -> Iterator[None]:
        """Temporarily put the EMA weights into ``model`` (validation, export); restores on exit."""
        params = dict(model.named_parameters())
        backup = {name: params[name].detach().clone() for name in self.shadow}
        try:
            with torch.no_grad():
                for name, value in self.shadow.items():
                    params[name].copy_(value)
            yield
        finally:
            with torch.no_grad():
                for name, value in backup.items():
                    params[name].copy_(value)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.shadow)

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing = sorted(set(self.shadow) - set(state))
        unexpected = sorted(set(state) - set(self.shadow))
        if missing or unexpected:
            raise ValueError(
                f"EMA state does not match the trainable parameters: missing {missing[:5]}, "
                f"unexpected {unexpected[:5]}"
            )
        with torch.no_grad():
            for name, value in state.items():
                self.shadow[name].copy_(value)


def copy_weights_into(model: nn.Module, weights: dict[str, torch.Tensor] | None) -> None:
    """Overwrite ``model``'s parameters named in ``weights`` (e.g. EMA weights before an export)."""
    if weights is None:
        return
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(value)
