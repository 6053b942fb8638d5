from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import torch

import sconce

sys.path.insert(0, str(Path(__file__).parent))

from tiny import tiny_data


@pytest.fixture
def data() -> sconce.Data:
    return tiny_data()


@pytest.fixture
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return sconce.models.demo_cnn(num_classes=4, in_channels=1, image_size=8)


@pytest.fixture(scope="session")
def _trained_once() -> torch.nn.Module:
    torch.manual_seed(0)
    model = sconce.models.demo_cnn(num_classes=4, in_channels=1, image_size=8)
    sconce.train(model, tiny_data(), epochs=2, lr=3e-3, progress=False, device="cpu")
    return model


@pytest.fixture
def trained(_trained_once: torch.nn.Module) -> torch.nn.Module:
    """The demo CNN trained on the tiny data (a fresh copy per test)."""
    return copy.deepcopy(_trained_once)
