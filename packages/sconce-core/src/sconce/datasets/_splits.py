"""Seeded splits of in-memory tensors into loaders."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, TensorDataset


def loader(images: torch.Tensor, labels: torch.Tensor, batch_size: int, *, shuffle: bool
           ) -> DataLoader[tuple[torch.Tensor, ...]]:
    """A DataLoader over in-memory tensors."""
    return DataLoader(TensorDataset(images, labels), batch_size=batch_size, shuffle=shuffle)


def seeded_permutation(count: int, seed: int) -> torch.Tensor:
    """The same permutation of ``range(count)`` on every machine for a given seed."""
    return torch.randperm(count, generator=torch.Generator().manual_seed(seed))
