"""Image ops in torch: resize-with-pad to 224, [-1, 1] scaling, and openpi's training augmentation.

All ops take float CHW tensors; `prepare_image` runs the whole chain on a dataset's uint8 HWC frame.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

MODEL_IMAGE_SIZE = 224
# openpi's augmentation (training only): crop 95% + resize back + rotate +-5 deg on non-wrist
# cameras; colour jitter on all cameras.
CROP_FRACTION = 0.95
MAX_ROTATION_DEG = 5.0
BRIGHTNESS, CONTRAST, SATURATION = 0.3, 0.4, 0.5
_LUMA = (0.299, 0.587, 0.114)


def to_chw_uint8(image: np.ndarray | torch.Tensor, *, key: str) -> torch.Tensor:
    """uint8 [H, W, 3] frame -> uint8 [3, H, W] view (channels-last strides). `key` names the camera in errors."""
    tensor = torch.as_tensor(image)
    if tensor.dtype != torch.uint8 or tensor.ndim != 3 or tensor.shape[-1] != 3:
        raise ValueError(
            f"camera {key!r}: expected a uint8 [H, W, 3] image, got {tensor.dtype} {tuple(tensor.shape)}"
        )
    return tensor.permute(2, 0, 1)


def resize_with_pad(
    image: torch.Tensor, size: int = MODEL_IMAGE_SIZE, *, pad_value: float = 0
) -> torch.Tensor:
    """Aspect-preserving bilinear resize of [..., C, H, W] into size x size, centred, padded with
    `pad_value` (black for pixels). uint8 in -> uint8 out (rounded, as openpi does); float -> float."""
    height, width = image.shape[-2:]
    if (height, width) == (size, size):
        return image
    ratio = max(width / size, height / size)
    new_h, new_w = int(height / ratio), int(width / ratio)
    batch = image.reshape(-1, *image.shape[-3:])
    if batch.dtype == torch.uint8:
        # torch's uint8 channels-last bilinear path is ~10x faster than float on CPU.
        batch = batch.contiguous(memory_format=torch.channels_last)
    # antialias: JAX's resize (used to train the public checkpoints) antialiases when downscaling.
    resized = F.interpolate(batch, size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=True)
    top, left = (size - new_h) // 2, (size - new_w) // 2
    padded = F.pad(resized, (left, size - new_w - left, top, size - new_h - top), value=pad_value)
    return padded.reshape(*image.shape[:-2], size, size)


def _uniform(generator: torch.Generator | None, low: float, high: float, n: int) -> torch.Tensor:
    return torch.rand(n, generator=generator) * (high - low) + low


def crop_rotate(image: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Random 95% crop resized back and a random +-5 deg rotation of a [C, S, S] image, in one resample."""
    angle, off_x, off_y = _uniform(generator, -1.0, 1.0, 3).tolist()
    theta = math.radians(angle * MAX_ROTATION_DEG)
    s = CROP_FRACTION
    # affine_grid maps output coords to input coords: input = s * R(theta) @ out + crop offset,
    # with the crop window anywhere inside the image (offset within +-(1 - s) in [-1, 1] units).
    matrix = torch.tensor(
        [
            [s * math.cos(theta), -s * math.sin(theta), off_x * (1 - s)],
            [s * math.sin(theta), s * math.cos(theta), off_y * (1 - s)],
        ],
        dtype=image.dtype,
    )
    grid = F.affine_grid(matrix[None], [1, *image.shape], align_corners=False)
    return F.grid_sample(image[None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0]


def color_jitter(image: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Brightness, contrast, saturation jitter of a [3, H, W] image in [0, 1] (fixed order)."""
    brightness, contrast, saturation = (
        _uniform(generator, 1 - BRIGHTNESS, 1 + BRIGHTNESS, 1),
        _uniform(generator, 1 - CONTRAST, 1 + CONTRAST, 1),
        _uniform(generator, 1 - SATURATION, 1 + SATURATION, 1),
    )
    luma = torch.tensor(_LUMA, dtype=image.dtype).view(3, 1, 1)
    image = (image * brightness).clamp_(0.0, 1.0)
    mean_gray = (image * luma).sum(0).mean()
    image = ((image - mean_gray) * contrast + mean_gray).clamp_(0.0, 1.0)
    gray = (image * luma).sum(0, keepdim=True)
    return ((image - gray) * saturation + gray).clamp_(0.0, 1.0)


def prepare_image(
    image: np.ndarray | torch.Tensor,
    *,
    key: str,
    size: int = MODEL_IMAGE_SIZE,
    augment: bool = False,
    crop_and_rotate: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Dataset frame (uint8 HWC) -> model image float32 [3, size, size] in [-1, 1].

    With `augment`, applies colour jitter, and crop + rotate when `crop_and_rotate` (non-wrist cameras).
    """
    pixels = resize_with_pad(to_chw_uint8(image, key=key), size)
    pixels = pixels.to(torch.float32, memory_format=torch.contiguous_format)
    if not augment:
        return pixels.div_(127.5).sub_(1.0)
    unit = pixels / 255.0
    if crop_and_rotate:
        unit = crop_rotate(unit, generator)
    return color_jitter(unit, generator).mul_(2.0).sub_(1.0)


def missing_image(size: int = MODEL_IMAGE_SIZE) -> torch.Tensor:
    """Placeholder for an absent camera: all -1 (black), paired with mask False."""
    return torch.full((3, size, size), -1.0, dtype=torch.float32)
