"""A tiny synthetic image dataset for the tests (also importable as ``tiny.py:tiny_data``)."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, TensorDataset

from sconce import Data


def tiny_data(batch_size: int = 32, classes: int = 4, size: int = 8, seed: int = 0) -> Data:
    """Noisy copies of one fixed random template per class: learnable in a few steps."""
    generator = torch.Generator().manual_seed(seed)
    templates = torch.randn(classes, 1, size, size, generator=generator)

    def split(count: int, shuffle: bool) -> DataLoader:
        labels = torch.arange(count) % classes
        images = templates[labels] + 0.8 * torch.randn(count, 1, size, size, generator=generator)
        return DataLoader(TensorDataset(images, labels), batch_size=batch_size, shuffle=shuffle)

    return Data(train=split(256, True), val=split(128, False), test=split(128, False),
                name="tiny", num_classes=classes, input_shape=(1, size, size))
