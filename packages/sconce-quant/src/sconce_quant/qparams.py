"""Quantization parameters: per-channel symmetric weight scales, affine activation qparams,
group-wise weight codes (on the core's :mod:`sconce.lowbit` grids), and fake quantization
with a straight-through gradient.

Example:
    >>> import torch
    >>> w = torch.tensor([[1.0, -2.0], [0.5, 0.25]])
    >>> per_channel_scales(w)  # max |w| of each output channel over 127
    tensor([0.0157, 0.0039])
"""

from __future__ import annotations

import logging
from functools import lru_cache
from pathlib import Path

import torch

from sconce.lowbit import GroupCodes, grid_for, quantize_to_grid

logger = logging.getLogger(__name__)

_EPS = 1e-12


def qrange(bits: int, *, signed: bool, reduce_range: bool = False) -> tuple[int, int]:
    """The integer range of ``bits``-bit values (one bit fewer with ``reduce_range``).

    Example:
        >>> qrange(8, signed=True), qrange(8, signed=False, reduce_range=True)
        ((-128, 127), (0, 127))
    """
    if reduce_range:
        bits -= 1
    if signed:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


def per_channel_scales(weight: torch.Tensor, bits: int = 8, *, axis: int = 0,
                       reduce_range: bool = False) -> torch.Tensor:
    """Symmetric per-channel scales: ``max |w|`` over each channel of ``axis``, over ``qmax``.

    ``qmax`` is 127 for 8 bits (63 with ``reduce_range``), so codes lie in ``[-qmax, qmax]``
    and zero is exact.

    Example:
        >>> per_channel_scales(torch.tensor([[4.0, -8.0]]), bits=4)
        tensor([1.1429])
    """
    qmax = qrange(bits, signed=True, reduce_range=reduce_range)[1]
    dims = [d for d in range(weight.dim()) if d != axis % weight.dim()]
    absmax = weight.detach().abs().amax(dim=dims) if dims else weight.detach().abs()
    return (absmax.to(torch.float32) / qmax).clamp_min(_EPS)


def affine_qparams(low: float, high: float, qmin: int, qmax: int) -> tuple[float, int]:
    """Scale and zero point that map ``[low, high]`` (widened to include 0) onto ``[qmin, qmax]``.

    Example:
        >>> affine_qparams(0.0, 2.55, 0, 255)
        (0.01, 0)
    """
    low, high = min(low, 0.0), max(high, 0.0)
    scale = max((high - low) / (qmax - qmin), _EPS)
    zero_point = round(qmin - low / scale)
    return round(scale, 12), max(qmin, min(qmax, zero_point))


def fake_quantize(x: torch.Tensor, scale: torch.Tensor | float, zero_point: torch.Tensor | int,
                  qmin: int, qmax: int, *, axis: int | None = None) -> torch.Tensor:
    """Quantize and dequantize ``x`` (per tensor, or per channel along ``axis``).

    The gradient passes straight through inside the range and is zero outside (as torch's
    fake-quant kernels do), so the result can be trained through.

    Example:
        >>> fake_quantize(torch.tensor([0.26, 9.0]), 0.1, 0, -128, 127)
        tensor([0.3000, 9.0000])
    """
    if axis is None:
        return torch.fake_quantize_per_tensor_affine(x, float(scale), int(zero_point), qmin, qmax)
    scale_t = torch.as_tensor(scale, dtype=torch.float32, device=x.device)
    zero_t = torch.as_tensor(zero_point, dtype=torch.int32, device=x.device)
    if zero_t.dim() == 0:
        zero_t = zero_t.expand_as(scale_t).contiguous()
    return torch.fake_quantize_per_channel_affine(x, scale_t, zero_t, axis, qmin, qmax)


def rtn_group_codes(weight: torch.Tensor, bits: int, group_size: int, *, symmetric: bool,
                    search: bool = False) -> GroupCodes:
    """Round-to-nearest group-wise quantization of a 2-D weight (``search``: each group's
    range chosen by :func:`sconce.lowbit.grid_for`'s rounding-error search).

    Example:
        >>> codes = rtn_group_codes(torch.randn(4, 8), 4, 4, symmetric=False)
        >>> codes.scales.shape, int(codes.codes.max()) <= 15
        (torch.Size([4, 2]), True)
    """
    rows, cols = weight.shape
    group_size = cols if group_size <= 0 else group_size
    codes = torch.empty(rows, cols, dtype=torch.uint8)
    scales, zeros = [], []
    for start in range(0, cols, group_size):
        block = weight[:, start:start + group_size].to(torch.float32)
        scale, zero = grid_for(block, bits, symmetric=symmetric, search=search)
        codes[:, start:start + group_size] = quantize_to_grid(block, scale, zero, bits).to(
            torch.uint8)
        scales.append(scale)
        zeros.append(zero)
    return GroupCodes(codes, torch.stack(scales, 1).to(torch.float16),
                      torch.stack(zeros, 1).to(torch.uint8), bits, group_size)


@lru_cache(maxsize=1)
def cpu_has_vnni() -> bool:
    """Whether this CPU has 8-bit dot-product instructions (AVX-512 VNNI, AVX-VNNI or AMX).

    Without them, x86 int8 kernels multiply ``uint8 x int8`` pairs into saturating 16-bit
    sums, so one side must use 7 bits (``reduce_range``) to stay exact.

    Example:
        >>> isinstance(cpu_has_vnni(), bool)
        True
    """
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="ignore")
    except OSError:
        return False
    return any(flag in flags.split() for flag in ("avx512_vnni", "avx_vnni", "amx_int8"))
