"""snn.int8_weights: int8 codes per output channel, true size, reload, energy at int8."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import sconce
from sconce_snn.int8 import Int8Conv, Int8Linear, quantize_per_channel


def test_codes_are_symmetric_per_channel_and_keep_zeros() -> None:
    torch.manual_seed(0)
    weight = torch.randn(5, 3, 3, 3)
    weight[0, 0] = 0.0
    codes, scale = quantize_per_channel(weight)
    assert codes.dtype == torch.int8 and int(codes.abs().max()) == 127
    restored = codes.float() * scale[:, None, None, None]
    assert torch.all((restored - weight).abs() <= scale[:, None, None, None] / 2 + 1e-7)
    assert torch.all(codes[0, 0] == 0)


def test_int8_layers_compute_what_their_float_twins_compute() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3, stride=2, padding=1, groups=1)
    linear = nn.Linear(6, 2)
    x, y = torch.randn(2, 3, 9, 9), torch.randn(2, 6)
    assert torch.allclose(Int8Conv.from_float(conv)(x), conv(x), atol=0.02)
    assert torch.allclose(Int8Linear.from_float(linear)(y), linear(y), atol=0.02)


def test_an_snn_gets_int8_weights_through_the_pipeline(trained_snn, data, tmp_path) -> None:
    result = sconce.compress(trained_snn, data, recipe=["snn.int8_weights"], progress=False,
                             out=tmp_path, metrics=["accuracy", "size", "params", "energy"])
    original, quantized = result.report.stages
    assert {type(m) for m in result.model.modules()} >= {Int8Conv, Int8Linear}
    assert original.values["size"] / quantized.values["size"] > 3.0
    assert quantized.values["params"] == original.values["params"]
    assert abs(original.values["accuracy"] - quantized.values["accuracy"]) <= 2.0
    assert quantized.values["energy"] < original.values["energy"] / 3  # int8 ops
    loaded = sconce.load(tmp_path, model=type(trained_snn)())
    x = next(iter(data.test))[0]
    adapter = sconce.get_adapter(loaded)
    assert torch.equal(adapter.forward(loaded, x).spikes, adapter.forward(result.model, x).spikes)


def test_nothing_to_quantize_is_an_error() -> None:
    with pytest.raises(sconce.ModelError, match="no convolution or linear layer"):
        sconce.compress(nn.Sequential(nn.Flatten()), {"test": _loader()},
                        recipe=["snn.int8_weights"], progress=False)


def _loader() -> torch.utils.data.DataLoader:
    dataset = torch.utils.data.TensorDataset(torch.randn(8, 4), torch.arange(8) % 4)
    return torch.utils.data.DataLoader(dataset, batch_size=4)
