"""Models and data shared by the sconce-quant tests (imported by name, not as conftest)."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import TensorDataset


def blob_images(samples: int, seed: int) -> TensorDataset:
    """1x8x8 images whose class (0-3) is the quadrant holding a bright blob."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(samples) % 4
    images = 0.3 * torch.randn(samples, 1, 8, 8, generator=generator)
    for index, label in enumerate(labels.tolist()):
        row, col = divmod(label, 2)
        images[index, 0, row * 4:(row + 1) * 4, col * 4:(col + 1) * 4] += 1.0
    return TensorDataset(images, labels)


class SmallCNN(nn.Module):
    """Conv-BN-ReLU twice, a pool, a flatten and two Linear layers (a VGG in miniature)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Sequential(nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU()),
            nn.MaxPool2d(2),
            nn.Sequential(nn.Conv2d(8, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16),
                          nn.ReLU()),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(),
                                        nn.Linear(32, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))
