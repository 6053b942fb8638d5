"""Models and data shared by the sconce-quant tests (imported by name, not as conftest)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
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


class Attention(nn.Module):
    """Self-attention and a feed-forward block, with layer norms (a transformer layer)."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        self.q, self.k, self.v, self.o = (nn.Linear(width, width) for _ in range(4))
        self.ff1, self.ff2 = nn.Linear(width, 4 * width), nn.Linear(4 * width, width)
        self.n1, self.n2 = nn.LayerNorm(width), nn.LayerNorm(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scores = self.q(x) @ self.k(x).transpose(1, 2) / x.shape[-1] ** 0.5
        x = self.n1(x + self.o(torch.softmax(scores, -1) @ self.v(x)))
        return self.n2(x + self.ff2(F.gelu(self.ff1(x))))


class Encoder(nn.Module):
    """Token embedding, two attention layers, a classifier head."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(100, 32)
        self.layers = nn.Sequential(Attention(), Attention())
        self.head = nn.Linear(32, 4)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.layers(self.embed(ids)).mean(1))
