"""Shared fixtures: a clean plugin state, learnable data, small trained networks."""

from __future__ import annotations

import copy
from collections.abc import Iterator

import pytest
import torch
from snn_helpers import Net, relu_cnn, tiny_data

import sconce
from sconce.plugins import reset_plugins


@pytest.fixture(autouse=True)
def _fresh_plugins(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every test starts with plugins unloaded, only this package's plugin, no progress bars."""
    monkeypatch.setenv("SCONCE_NO_PROGRESS", "1")
    monkeypatch.setenv("SCONCE_PLUGINS", "snn")
    torch.set_num_threads(1)
    reset_plugins()
    yield
    reset_plugins()


@pytest.fixture
def data() -> sconce.Data:
    return tiny_data()


@pytest.fixture(scope="session")
def _trained_snn() -> Net:
    torch.manual_seed(0)
    model = Net()
    sconce.train(model, tiny_data(), epochs=3, lr=1e-2, progress=False, device="cpu")
    return model


@pytest.fixture
def trained_snn(_trained_snn: Net) -> Net:
    """The step-wise conv SNN trained on the blobs (a fresh copy per test)."""
    return copy.deepcopy(_trained_snn)


@pytest.fixture(scope="session")
def _trained_ann() -> torch.nn.Module:
    torch.manual_seed(0)
    model = relu_cnn()
    sconce.train(model, tiny_data(), epochs=3, lr=3e-3, progress=False, device="cpu")
    return model.eval()


@pytest.fixture
def trained_ann(_trained_ann: torch.nn.Module) -> torch.nn.Module:
    return copy.deepcopy(_trained_ann)
