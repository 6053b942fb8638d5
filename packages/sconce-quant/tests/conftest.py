"""Shared fixtures: a clean plugin state, small learnable data, small trained models."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from quant_helpers import SmallCNN, blob_images
from torch.utils.data import DataLoader

import sconce
from sconce.context import Context
from sconce.plugins import reset_plugins


@pytest.fixture(autouse=True)
def _fresh_plugins(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every test starts with plugins unloaded, only this package's plugin, no progress bars."""
    monkeypatch.setenv("SCONCE_NO_PROGRESS", "1")
    monkeypatch.setenv("SCONCE_PLUGINS", "quant")
    torch.set_num_threads(1)
    reset_plugins()
    yield
    reset_plugins()


@pytest.fixture(scope="session")
def loaders() -> dict[str, DataLoader]:
    return {"train": DataLoader(blob_images(512, 0), batch_size=64, shuffle=True),
            "test": DataLoader(blob_images(256, 1), batch_size=64)}


@pytest.fixture
def data(loaders: dict[str, DataLoader]) -> sconce.Data:
    return sconce.Data.from_value(loaders)


@pytest.fixture(scope="session")
def trained_cnn(loaders: dict[str, DataLoader]) -> SmallCNN:
    """A SmallCNN trained to high accuracy on the blob data (a few seconds)."""
    torch.manual_seed(0)
    model = SmallCNN()
    sconce.train(model, sconce.Data.from_value(loaders), epochs=3, progress=False, seed=0)
    return model.eval()


@pytest.fixture
def cnn(trained_cnn: SmallCNN) -> SmallCNN:
    """A fresh copy of the trained CNN (tests may change it)."""
    model = SmallCNN()
    model.load_state_dict(trained_cnn.state_dict())
    return model.eval()


@pytest.fixture
def ctx(data: sconce.Data) -> Context:
    """A context over the blob data, with quick timing."""
    return Context(data=data, progress=False,
                   timing=sconce.TimingSettings(threads=1, rounds=1, round_seconds=0.01,
                                                warmup_seconds=0.01, batch_size=8))
