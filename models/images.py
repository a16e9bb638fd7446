"""Synthetic image classification data shared by the CNN reference models."""

import torch
from torch import Tensor

TEMPLATE_SEED = 12345  # seeds the class templates, so every step shows the same classes


def template_images(
    batch_size: int, step: int, num_classes: int, channels: int, side: int, noise: float
) -> tuple[Tensor, Tensor]:
    """Images [B, channels, side, side] (float32) and a class label [B] (int64).

    Each class has a fixed random template image; a sample is its class's template plus
    Gaussian noise of std `noise`. A generator seeded from `step` makes every step reproducible
    without touching the global RNG.
    """
    shape = (num_classes, channels, side, side)
    templates = torch.randn(shape, generator=torch.Generator().manual_seed(TEMPLATE_SEED))
    g = torch.Generator().manual_seed(step)
    label = torch.randint(num_classes, (batch_size,), generator=g)
    return templates[label] + noise * torch.randn((batch_size, *shape[1:]), generator=g), label
