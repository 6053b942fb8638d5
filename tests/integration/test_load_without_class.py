"""After prune.channel, ``sconce.load(folder)`` without the model's class gives a module that
takes any batch size, switches modes and returns the compressed model's outputs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import sconce

FAST = {"metrics": ["params"], "progress": False, "device": "cpu", "finetune_epochs": 0}


def _data() -> sconce.Data:
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(64, 1, 16, 16, generator=generator)
    labels = torch.arange(64) % 4
    loader = DataLoader(TensorDataset(images, labels), batch_size=16)
    return sconce.Data(train=loader, test=loader)


@pytest.mark.parametrize("build", [
    lambda: sconce.models.resnet(num_classes=4, in_channels=1, image_size=16, depths=(1, 1),
                                 widths=(16, 32)),
    lambda: sconce.models.mobilenet_v2(num_classes=4, in_channels=1, image_size=16),
], ids=["resnet", "mobilenetv2"])
def test_channel_pruned_model_loads_without_its_class(build, tmp_path: Path) -> None:
    torch.manual_seed(0)
    result = sconce.compress(build(), _data(), recipe=[("prune.channel", {"sparsity": 0.5})],
                             **FAST)
    result.save(tmp_path)
    assert (tmp_path / "model.pt2").is_file()
    loaded = sconce.load(tmp_path)
    for batch in (1, 7):
        x = torch.randn(batch, 1, 16, 16)
        with torch.no_grad():
            assert torch.equal(loaded(x), result.model(x)), f"batch {batch}"
    assert loaded.train().training and not loaded.eval().training
    assert sum(p.numel() for p in loaded.parameters()) == result.report.value(-1, "params")
