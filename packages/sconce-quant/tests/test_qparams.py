"""Scales, zero points, group codes, int4 packing and calibration ranges, on planted values."""

from __future__ import annotations

import pytest
import torch

from sconce.errors import ConfigError
from sconce.lowbit import dequantize_groups, pack_int4, unpack_int4
from sconce_quant.calibration import RangeEstimator
from sconce_quant.qparams import affine_qparams, per_channel_scales, qrange, rtn_group_codes


def test_per_channel_scales_on_a_planted_tensor() -> None:
    # each output channel's largest magnitude is planted: 2.54, 0.127, 12.7 (negative), 1e-3
    weight = torch.zeros(4, 3, 2, 2)
    weight[0, 1, 0, 0] = 2.54
    weight[1, 2, 1, 1] = -0.127
    weight[2, 0, 1, 0] = -12.7
    weight[2, 2, 0, 1] = 5.0
    weight[3, 0, 0, 0] = 1e-3
    weight[3, 1, 0, 0] = -5e-4
    scales = per_channel_scales(weight)
    torch.testing.assert_close(scales, torch.tensor([0.02, 0.001, 0.1, 1e-3 / 127]))
    # the planted extremes land exactly on +-127; zero stays exactly zero
    codes = torch.round(weight / scales.reshape(-1, 1, 1, 1))
    assert codes.abs().amax(dim=(1, 2, 3)).tolist() == [127.0, 127.0, 127.0, 127.0]
    assert int((codes[weight == 0] != 0).sum()) == 0
    # reduce_range halves the grid: 63 levels each side
    torch.testing.assert_close(per_channel_scales(weight, reduce_range=True)[0],
                               torch.tensor(2.54 / 63))
    # along another axis: one scale per input channel
    assert per_channel_scales(weight, axis=1).shape == (3,)


def test_affine_qparams_and_ranges() -> None:
    assert qrange(8, signed=True) == (-128, 127)
    assert qrange(8, signed=False, reduce_range=True) == (0, 127)
    scale, zero = affine_qparams(-1.0, 3.0, 0, 255)
    assert scale == pytest.approx(4.0 / 255)
    assert zero == round(1.0 / scale)
    # a positive-only range still contains zero exactly
    assert affine_qparams(2.0, 5.1, 0, 255) == (pytest.approx(0.02), 0)


@pytest.mark.parametrize("length", [1, 2, 7, 128, 129])
def test_int4_packing_round_trips_exactly(length: int) -> None:
    generator = torch.Generator().manual_seed(length)
    codes = torch.randint(0, 16, (5, length), generator=generator, dtype=torch.uint8)
    packed = pack_int4(codes)
    assert packed.dtype == torch.uint8
    assert packed.shape == (5, (length + 1) // 2)  # two codes per byte
    assert torch.equal(unpack_int4(packed, length), codes)
    every = torch.arange(16, dtype=torch.uint8).reshape(1, 16)  # every code value
    assert torch.equal(unpack_int4(pack_int4(every), 16), every)


def test_int4_packing_rejects_out_of_range_codes() -> None:
    with pytest.raises(ConfigError, match="0..15"):
        pack_int4(torch.tensor([[16]]))


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("bits", [4, 8])
def test_group_codes_bound_the_error_by_half_a_step(bits: int, symmetric: bool) -> None:
    torch.manual_seed(0)
    weight = torch.randn(6, 40)
    codes = rtn_group_codes(weight, bits, 16, symmetric=symmetric)
    assert codes.scales.shape == (6, 3)  # 40 columns in groups of 16: 3 groups
    assert int(codes.codes.max()) <= 2**bits - 1
    error = (codes.dequantize() - weight).abs()
    step = codes.scales.float().repeat_interleave(16, dim=1)[:, :40]
    assert bool((error <= step / 2 + 1e-6).all())
    restored = dequantize_groups(codes.codes, codes.scales, codes.zeros, 16)
    torch.testing.assert_close(restored, codes.dequantize())


def test_histogram_ranges_by_method() -> None:
    torch.manual_seed(0)
    estimator = RangeEstimator()
    values = torch.distributions.Laplace(0.0, 1.0).sample((200_000,))
    for chunk in values.chunk(4):  # several batches, growing the histogram's span
        estimator.update(chunk)
    assert float(estimator.hist.sum()) == pytest.approx(200_000)  # type: ignore[union-attr]
    low, high = estimator.range("minmax")
    assert (low, high) == (pytest.approx(float(values.min())), pytest.approx(float(values.max())))
    p_low, p_high = estimator.range("percentile", percentile=99.0)
    assert p_high == pytest.approx(float(torch.quantile(values, 0.99)), rel=0.05)
    assert p_low == pytest.approx(float(torch.quantile(values, 0.01)), rel=0.05)
    # for a heavy tail at 4 bits the error-minimizing range clips well inside min-max
    m_low, m_high = estimator.range("mse", levels=16)
    assert 1.0 < m_high < 0.6 * high and 0.6 * low < m_low < -1.0


def test_mse_keeps_exact_zeros_exact() -> None:
    estimator = RangeEstimator()
    relu = torch.relu(torch.randn(100_000, generator=torch.Generator().manual_seed(1)))
    estimator.update(relu)
    low, high = estimator.range("mse", levels=256)
    assert low == 0.0 and 3.0 < high <= float(relu.max())


def test_an_empty_estimator_and_an_unknown_method_are_errors() -> None:
    with pytest.raises(ValueError, match="no values"):
        RangeEstimator().range()
    estimator = RangeEstimator()
    estimator.update(torch.ones(3))
    with pytest.raises(ValueError, match="unknown calibration method"):
        estimator.range("entropy")


@pytest.mark.parametrize("symmetric", [True, False])
def test_clip_search_never_increases_the_rounding_error(symmetric: bool) -> None:
    torch.manual_seed(0)
    weight = torch.randn(32, 128) * torch.rand(32, 1)
    weight[:, 7] *= 6.0  # an outlier column, as in real layers
    plain = rtn_group_codes(weight, 4, 64, symmetric=symmetric)
    searched = rtn_group_codes(weight, 4, 64, symmetric=symmetric, search=True)
    per_group = [(codes.dequantize() - weight).square().reshape(32, 2, 64).sum(-1)
                 for codes in (plain, searched)]
    assert bool((per_group[1] <= per_group[0] + 1e-6).all())  # per group, never worse
    assert float(per_group[1].sum()) < 0.95 * float(per_group[0].sum())  # outliers clipped
    assert int(searched.codes.max()) <= 15
    if symmetric:
        assert bool((searched.zeros == 8).all())
