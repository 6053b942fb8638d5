"""Shared fixtures: a clean plugin state with only this package's plugin, one thread."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from sconce.plugins import reset_plugins

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(autouse=True)
def _fresh_plugins(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every test starts with plugins unloaded, only this package's plugin, no progress bars."""
    monkeypatch.setenv("SCONCE_NO_PROGRESS", "1")
    monkeypatch.setenv("SCONCE_PLUGINS", "sparse")
    torch.set_num_threads(1)
    reset_plugins()
    yield
    reset_plugins()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
