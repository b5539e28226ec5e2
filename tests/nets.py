"""Small random CNNs for tests that need a real but fast model."""

from __future__ import annotations

import torch
from torch import nn


def tiny_cnn(widths: tuple[int, int] = (8, 16), classes: int = 10, *, second_stride: int = 1,
             pool: bool = False, seed: int = 0) -> nn.Sequential:
    """conv 5x5 stride 2 -> ReLU(inplace) [-> max-pool 2] -> conv 3x3 -> ReLU -> global average
    -> linear, in eval mode; layer ids "0", "1", ... as ``nn.Sequential`` numbers them."""
    torch.manual_seed(seed)
    first, second = widths
    layers = [nn.Conv2d(3, first, 5, stride=2, padding=2), nn.ReLU(inplace=True)]
    if pool:
        layers.append(nn.MaxPool2d(2))
    layers += [nn.Conv2d(first, second, 3, stride=second_stride, padding=1), nn.ReLU(),
               nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(second, classes)]
    return nn.Sequential(*layers).eval()
