"""The size / params metrics see the true storage of quantized layers, byte for byte."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import sconce
from sconce_quant.engines import ENGINES, StaticSettings
from sconce_quant.modules import WeightOnlyLinear
from sconce_quant.qparams import rtn_group_codes

MIB = 2**20


def _measure(model: nn.Module, x: torch.Tensor) -> dict[str, float | None]:
    return sconce.measure(model, example_inputs=x, metrics=["params", "nonzero_params", "size"])


def test_int4_weight_only_linear_size_is_exact() -> None:
    torch.manual_seed(0)
    linear = nn.Linear(256, 6)
    layer = WeightOnlyLinear.from_codes(rtn_group_codes(linear.weight, 4, 128, symmetric=False),
                                        linear.bias)
    values = _measure(nn.Sequential(layer), torch.randn(1, 256))
    # 6 rows x 256 codes at 4 bits = 768 bytes; 6 x 2 groups of (fp16 scale + uint8 zero)
    # = 36 bytes; 6 float32 biases = 24 bytes
    assert values["size"] * MIB == 768 + 36 + 24
    assert values["params"] == 256 * 6 + 6
    # int8 with one group per row: 1536 codes, 6 x (2 + 1) bytes of qparams, 24 of bias
    layer8 = WeightOnlyLinear.from_codes(rtn_group_codes(linear.weight, 8, 0, symmetric=True),
                                         linear.bias)
    assert _measure(layer8, torch.randn(1, 256))["size"] * MIB == 1536 + 18 + 24


def test_nonzero_counts_codes_away_from_the_zero_point() -> None:
    weight = torch.zeros(2, 8)
    weight[0, :3] = 1.0  # three non-zero weights
    layer = WeightOnlyLinear.from_codes(rtn_group_codes(weight, 4, 8, symmetric=False), None)
    assert _measure(layer, torch.randn(1, 8))["nonzero_params"] == 3


def test_torch_ao_int8_linear_size_is_exact() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(100, 10)).eval()
    x = torch.randn(32, 100)
    built = ENGINES["fx"].prepare(model, [x], StaticSettings(reduce_range=True)).build()
    values = _measure(built.module, x)
    # 1000 int8 weights + 10 per-channel scales (float64) + 10 zero points (int64), as torch
    # stores them; 10 float32 biases; the output scale (float64) and zero point (int64);
    # the input's quantization scale (float32) and zero point (int64) buffers
    assert values["size"] * MIB == 1000 + 80 + 80 + 40 + 16 + 4 + 8
    assert values["params"] == 1010


def test_onnxruntime_int8_size_counts_every_initializer() -> None:
    import onnx
    from onnx import numpy_helper

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(100, 10)).eval()
    x = torch.randn(32, 100)
    built = ENGINES["onnxruntime"].prepare(model, [x], StaticSettings()).build()
    graph = onnx.load_from_string(built.module.onnx_bytes()).graph
    arrays = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    values = _measure(built.module, x)
    assert values["size"] * MIB == sum(a.nbytes for a in arrays.values())
    int8 = [a for a in arrays.values() if a.dtype == "int8" and a.size == 1000]
    assert len(int8) == 1  # the weight is stored as 1000 int8 values
    assert values["params"] == 1010  # weights and bias; scales and zero points are not params
    assert _measure(model, x)["size"] / values["size"] > 3.0


@pytest.mark.parametrize("kind", [nn.LSTM, nn.GRU])
def test_torch_dynamic_recurrent_layers_are_counted(kind: type[nn.Module]) -> None:
    from sconce_quant.dynamic import torch_dynamic

    model = nn.Sequential(kind(16, 32))
    x = torch.randn(5, 2, 16)
    float_values = _measure(model, x)
    quantized = torch_dynamic(model, ["0"], per_channel=False)
    values = _measure(quantized, x)
    assert values["params"] == float_values["params"]
    assert float_values["size"] / values["size"] > 2.5  # int8 weights, float32 biases
