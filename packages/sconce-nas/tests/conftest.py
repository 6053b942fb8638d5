from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import sconce
from sconce.metrics.timing import TimingSettings
from sconce_nas import ElasticCNN

QUICK_TIMING = TimingSettings(threads=1, rounds=1, round_seconds=0.005, warmup_seconds=0.0,
                              min_calls=2)


def tiny_data(batch_size: int = 32, classes: int = 4, size: int = 8, seed: int = 0) -> sconce.Data:
    """Noisy copies of one fixed random template per class: learnable in a few steps."""
    generator = torch.Generator().manual_seed(seed)
    templates = torch.randn(classes, 1, size, size, generator=generator)

    def split(count: int, shuffle: bool) -> DataLoader:
        labels = torch.arange(count) % classes
        images = templates[labels] + 0.8 * torch.randn(count, 1, size, size, generator=generator)
        return DataLoader(TensorDataset(images, labels), batch_size=batch_size, shuffle=shuffle)

    return sconce.Data(train=split(256, True), val=split(128, False), test=split(128, False),
                       name="tiny", num_classes=classes, input_shape=(1, size, size))


def tiny_space(**overrides) -> ElasticCNN:
    options = {"in_channels": 1, "image_size": 8, "num_classes": 4,
               "stages": ((8, 2), (16, 2)), "head_channels": 32}
    return ElasticCNN(**{**options, **overrides})


@pytest.fixture
def data() -> sconce.Data:
    return tiny_data()


@pytest.fixture
def space() -> ElasticCNN:
    return tiny_space()


@pytest.fixture(scope="session")
def trained_supernet():
    """The tiny space's supernet, trained once for the session (on tiny_data)."""
    from sconce_nas import train_supernet

    return train_supernet(tiny_space(), tiny_data(), 2, lr=1e-2, seed=0, device="cpu",
                          progress=False)
