"""Low-bit codes, int4 packing, LowBitLinear and its true size."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import sconce
from sconce.errors import ConfigError
from sconce.lowbit import GroupCodes, LowBitLinear, grid_for, pack_int4, unpack_int4


@pytest.mark.parametrize("length", [1, 6, 7])
def test_int4_packing_round_trips_exactly(length: int) -> None:
    codes = torch.randint(0, 16, (3, length), dtype=torch.uint8)
    packed = pack_int4(codes)
    assert packed.shape == (3, (length + 1) // 2)
    assert torch.equal(unpack_int4(packed, length), codes)
    with pytest.raises(ConfigError, match="0..15"):
        pack_int4(torch.tensor([[16]]))


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("symmetric", [False, True])
def test_codes_keep_zeros_exact_and_stay_within_a_step(bits: int, symmetric: bool) -> None:
    torch.manual_seed(0)
    weight = torch.randn(5, 20)
    weight[weight.abs() < 0.5] = 0.0
    codes = GroupCodes.quantize(weight, bits=bits, group_size=8, symmetric=symmetric)
    restored = codes.dequantize()
    assert torch.equal(restored[weight == 0], torch.zeros(int((weight == 0).sum())))
    scale = codes.scales.float().repeat_interleave(8, dim=1)[:, :20]
    # within one step (half a step, plus the zero point's rounding at the ends of the range)
    assert bool(((restored - weight).abs() <= scale + 1e-6).all())
    assert codes.scales.shape == (5, 3) and int(codes.codes.max()) < 2**bits


def test_grid_includes_zero_and_rejects_other_widths() -> None:
    scale, zero = grid_for(torch.tensor([[1.0, 3.0]]), 4)  # all positive: the range starts at 0
    assert float(zero[0]) == 0.0 and abs(float(scale[0]) - 0.2) < 1e-3
    with pytest.raises(ConfigError, match="bits must be one of 4, 8"):
        grid_for(torch.ones(1, 2), 3)


@pytest.mark.parametrize("bits", [4, 8])
def test_lowbit_linear_computes_with_the_dequantized_weight_and_reloads(bits: int) -> None:
    torch.manual_seed(0)
    linear = torch.nn.Linear(10, 3)
    codes = GroupCodes.quantize(linear.weight.detach(), bits=bits, group_size=4)
    layer = LowBitLinear.from_codes(codes, linear.bias)
    x = torch.randn(2, 10)
    torch.testing.assert_close(layer(x), F.linear(x, codes.dequantize(), linear.bias))
    again = LowBitLinear(10, 3, bits=bits, group_size=4)
    again.load_state_dict(layer.state_dict())
    torch.testing.assert_close(again(x), layer(x))
    assert torch.equal(again.codes().codes, codes.codes)


def test_true_size_counts_packed_codes_and_zeros_through_the_builtin_plugin() -> None:
    weight = torch.randn(4, 256)
    weight[:, ::2] = 0.0  # half the weights pruned
    codes = GroupCodes.quantize(weight, bits=4, group_size=128)
    layer = LowBitLinear.from_codes(codes, bias=None)
    footprint = sconce.model_footprint(torch.nn.Sequential(layer))
    # 4 x 128 bytes of packed codes + 4 x 2 groups of (fp16 scale + uint8 zero)
    assert footprint.nbytes == 4 * 128 + 4 * 2 * 3
    # non-zeros are the stored values that are not zero (small weights may round to zero)
    assert footprint.params == 1024
    assert footprint.nonzero == int((codes.dequantize() != 0).sum()) <= 512


def test_a_group_of_zeros_gets_a_finite_grid() -> None:
    weight = torch.zeros(2, 8)
    weight[1, :4] = 1e-9  # below float16's smallest step
    codes = GroupCodes.quantize(weight, bits=4, group_size=4)
    assert bool(torch.isfinite(codes.scales.float()).all()) and bool((codes.scales > 0).all())
    assert torch.equal(codes.dequantize(), torch.zeros(2, 8))


@pytest.mark.parametrize("symmetric", [False, True])
def test_range_search_clips_outliers_keeps_zero_and_is_never_worse(symmetric: bool) -> None:
    from sconce.lowbit import quantize_to_grid, rounding_error

    torch.manual_seed(0)
    weight = torch.randn(16, 64)
    weight[:, 3] *= 8.0  # an outlier column
    weight[:, ::2] = 0.0  # half pruned
    weight[0] = 0.0  # a row of zeros
    plain = grid_for(weight, 4, symmetric=symmetric)
    searched = grid_for(weight, 4, symmetric=symmetric, search=True)
    before, after = rounding_error(weight, *plain, 4), rounding_error(weight, *searched, 4)
    assert bool((after <= before + 1e-6).all())
    assert float(after.sum()) < float(before.sum())  # some ranges were clipped to gain
    assert bool((searched[0] > 0).all()) and bool(torch.isfinite(searched[0]).all())
    codes = quantize_to_grid(weight, *searched, 4)
    zero_codes = codes[weight == 0]
    assert torch.equal(zero_codes, searched[1].unsqueeze(1).expand_as(codes)[weight == 0])
