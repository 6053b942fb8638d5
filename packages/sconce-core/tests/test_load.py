"""sconce.load without the model's class: the exported program is a usable nn.Module on every
reference architecture (any batch size, mode switches, .to(), outputs equal)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import sconce
from sconce.exported import export_program, load_program
from sconce.serialization import Architecture, save_model

SHAPE = {"num_classes": 4, "in_channels": 1, "image_size": 16}
ARCHITECTURES = ["demo-cnn", "vgg", "resnet18", "mobilenetv2", "vit"]


def _trained_statistics(model: nn.Module) -> nn.Module:
    """Give BatchNorms non-trivial running statistics, as a trained model has."""
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.randn(8, SHAPE["in_channels"], 16, 16))
    return model.eval()


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_a_reference_architecture_loads_without_its_class(name: str, tmp_path) -> None:
    torch.manual_seed(0)
    model = _trained_statistics(sconce.api.build_model(name, **SHAPE))
    save_model(model, tmp_path, architecture=Architecture(),
               example_inputs=torch.randn(1, 1, 16, 16))
    loaded = sconce.load(tmp_path)
    assert not loaded.training
    for batch in (1, 7):
        x = torch.randn(batch, 1, 16, 16)
        with torch.no_grad():  # equal up to float rounding (eager attention takes a fused path)
            torch.testing.assert_close(loaded(x), model(x), rtol=1e-5, atol=1e-6)
    assert list(loaded.state_dict()) == list(model.state_dict())

    # training mode behaves as the original's: batch statistics, running stats updated
    reference = copy.deepcopy(model).train()
    assert loaded.train() is loaded and loaded.training
    x = torch.randn(7, 1, 16, 16)
    torch.manual_seed(1)
    out = loaded(x)
    torch.manual_seed(1)
    expected = reference(x)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    for key, value in reference.state_dict().items():
        if "running_" in key:
            torch.testing.assert_close(loaded.state_dict()[key], value, rtol=1e-5, atol=1e-6)
    out.sum().backward()  # it trains: gradients reach the parameters
    assert all(p.grad is not None for p in loaded.parameters() if p.requires_grad)

    loaded.eval()
    reference.eval()
    doubled = loaded.to(torch.float64)
    x = torch.randn(3, 1, 16, 16, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(doubled(x), reference.double()(x))


def test_dropout_follows_the_mode() -> None:
    net = nn.Sequential(nn.Linear(8, 64), nn.Dropout(0.5), nn.Linear(64, 2)).eval()
    program = export_program(net, torch.randn(1, 8))
    import io

    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    buffer.seek(0)
    loaded = load_program(buffer)
    x = torch.randn(32, 8)
    assert torch.equal(loaded(x), loaded(x))  # eval: deterministic
    loaded.train()
    assert not torch.equal(loaded(x), loaded(x))  # train: dropout draws
    loaded.eval()
    assert torch.equal(loaded(x), net(x))


def test_a_model_with_a_fixed_batch_size_is_still_exported() -> None:
    class FixedBatch(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x).reshape(3, 2)  # the code pins the batch to 3

    model = FixedBatch()
    program = export_program(model, torch.randn(3, 4))
    x = torch.randn(3, 4)
    assert torch.equal(program.module()(x), model(x))
