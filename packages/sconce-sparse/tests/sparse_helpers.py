"""Models and weights shared by the sconce-sparse tests (imported by name, not as conftest)."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import sconce

QUICK = sconce.TimingSettings(threads=1, rounds=1, round_seconds=0.005, warmup_seconds=0.005,
                              batch_size=8)


def unstructured(weight: torch.Tensor, sparsity: float, seed: int = 0) -> torch.Tensor:
    """``weight`` with a random ``sparsity`` fraction of its values set to zero."""
    generator = torch.Generator().manual_seed(seed)
    keep = torch.rand(weight.shape, generator=generator) >= sparsity
    return weight * keep


def blocky(weight: torch.Tensor, block: tuple[int, int], sparsity: float,
           seed: int = 0) -> torch.Tensor:
    """``weight`` with a ``sparsity`` fraction of its ``block`` tiles (2-D view) zeroed."""
    generator = torch.Generator().manual_seed(seed)
    rows = weight.shape[0]
    cols = weight.numel() // rows
    tiles = (torch.rand(rows // block[0], cols // block[1], generator=generator)
             >= sparsity).to(weight.dtype)
    mask = torch.kron(tiles, torch.ones(block, dtype=weight.dtype)).reshape(weight.shape)
    return weight * mask


def sparsify_(model: nn.Module, sparsity: float) -> nn.Module:
    """Zero a random ``sparsity`` fraction of every Linear / Conv weight, in place."""
    with torch.no_grad():
        for index, module in enumerate(model.modules()):
            if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d)):
                module.weight.copy_(unstructured(module.weight, sparsity, seed=index))
    return model


class SmallCNN(nn.Module):
    """Two convolutions and two Linear layers over 1x8x8 images (a VGG in miniature)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(128, 64), nn.ReLU(),
                                        nn.Linear(64, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def blob_data(samples: int = 64) -> sconce.Data:
    """1x8x8 images labelled by the quadrant of a bright blob (learnable in one epoch)."""
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(samples) % 4
    images = 0.3 * torch.randn(samples, 1, 8, 8, generator=generator)
    for index, label in enumerate(labels.tolist()):
        row, col = divmod(label, 2)
        images[index, 0, row * 4:(row + 1) * 4, col * 4:(col + 1) * 4] += 1.0
    loader = DataLoader(TensorDataset(images, labels), batch_size=16)
    return sconce.Data.from_value({"train": loader, "test": loader})
