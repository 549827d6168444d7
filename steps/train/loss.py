"""Which elements of the per-element flow-matching loss count: shared by training and offline evaluation,
so ``val_loss`` and ``val/loss`` are the same estimator."""

from __future__ import annotations


def loss_weights(batch: dict, per_element_shape, *, action_dim: int, reduction: str, mask_padded: bool):
    """0/1 weights [B, H, 32] selecting the loss elements that count .

    ``all_dims``: openpi's mean over all 32 dims; ``real_dims``: only the robot's ``action_dim`` dims
    (LeRobot); ``mask_padded`` also drops chunk steps past the episode end (``action_is_pad``).
    """
    import torch

    b, h, d = per_element_shape
    weights = torch.ones(b, h, d, device=batch["actions"].device)
    if reduction == "real_dims":
        weights[..., action_dim:] = 0
    if mask_padded:
        weights = weights * (~batch["action_is_pad"]).to(weights.dtype)[..., None]
    return weights
