"""Shared fixtures for sconce-core tests: tiny data, tiny models, a clean plugin state."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import sconce
from sconce.plugins import reset_plugins
from sconce.progress import set_progress


@pytest.fixture(autouse=True)
def _fresh_plugins(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every test starts with plugins unloaded and progress bars off (by the environment; the
    switch an in-process ``sconce --quiet`` turns off is turned back on)."""
    monkeypatch.setenv("SCONCE_NO_PROGRESS", "1")
    reset_plugins()
    set_progress(True)
    yield
    reset_plugins()
    set_progress(True)


class TinyNet(nn.Module):
    """A small conv net for 1x8x8 inputs."""

    def __init__(self, num_classes: int = 4) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.relu(self.bn(self.conv(x)))), 1))


def make_loaders(samples: int = 96, num_classes: int = 4, batch_size: int = 16,
                 seed: int = 0) -> dict[str, DataLoader]:
    """Learnable synthetic data: the class is which quadrant holds a bright blob."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(samples) % num_classes
    images = 0.1 * torch.randn(samples, 1, 8, 8, generator=generator)
    for index, label in enumerate(labels.tolist()):
        row, col = divmod(label % 4, 2)
        images[index, 0, row * 4:(row + 1) * 4, col * 4:(col + 1) * 4] += 1.0
    dataset = TensorDataset(images, labels)
    return {"train": DataLoader(dataset, batch_size=batch_size, shuffle=True),
            "test": DataLoader(dataset, batch_size=batch_size)}


@pytest.fixture
def loaders() -> dict[str, DataLoader]:
    return make_loaders()


@pytest.fixture
def data(loaders: dict[str, DataLoader]) -> sconce.Data:
    return sconce.Data.from_value(loaders)


@pytest.fixture
def tiny() -> TinyNet:
    torch.manual_seed(0)
    return TinyNet()


class RoundToHalf(sconce.Technique):
    """A real, tiny 'quantization' for core-only CLI runs: weights rounded to float16 values."""

    name, kind, Config = "test.round_half", "quantize", sconce.QuantizeConfig

    def apply(self, model: nn.Module, config: sconce.QuantizeConfig,
              ctx: sconce.Context) -> nn.Module:
        with torch.no_grad():
            for param in model.parameters():
                param.copy_(param.half().float())
        return model


@pytest.fixture
def round_half() -> None:
    """Register :class:`RoundToHalf`, so a run without a recipe has a technique to plan with
    when the plugins are off."""
    import types

    sconce.register_plugin(types.SimpleNamespace(sconce_register_techniques=sconce.hookimpl(
        lambda register: register(RoundToHalf()))), name="test-round-half")
