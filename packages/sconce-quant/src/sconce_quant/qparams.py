"""Quantization parameters: per-channel symmetric weight scales, affine activation qparams,
group-wise weight codes (the core's :class:`sconce.lowbit.GroupCodes`, with a rounding-error
search for their ranges), and fake quantization with a straight-through gradient.

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

from sconce.lowbit import GroupCodes, quantize_to_grid

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


def group_qparams(weight: torch.Tensor, bits: int, *, symmetric: bool, search: bool = False
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale (float16-exact, as float32) and zero point per row of ``weight`` (one group).

    Symmetric: ``scale = max|w| / (2**(bits-1) - 1)``, zero point ``2**(bits-1)``.
    Asymmetric: the row's ``[min, max]`` (widened to include 0) onto ``[0, 2**bits - 1]``.
    With ``search``, each row's range is also tried shrunk (down to
    ``1 - CLIP_SEARCH_MAX_SHRINK`` of itself) and the range with the least squared rounding
    error is kept: clipping a few outliers buys a finer grid for all the other weights.

    Example:
        >>> group_qparams(torch.tensor([[0.0, 1.5]]), 4, symmetric=False)
        (tensor([0.1000]), tensor([0.]))
        >>> w = torch.randn(4, 128, generator=torch.Generator().manual_seed(0))
        >>> minmax = group_qparams(w, 4, symmetric=False)
        >>> searched = group_qparams(w, 4, symmetric=False, search=True)
        >>> bool((_rounding_error(w, *searched, 4) <= _rounding_error(w, *minmax, 4)).all())
        True
    """
    w = weight.detach().to(torch.float32)
    if symmetric:
        low = -w.abs().amax(dim=1)
        high = -low
    else:
        low = w.amin(dim=1).clamp_max(0.0)
        high = w.amax(dim=1).clamp_min(0.0)
    scale, zero = _range_qparams(low, high, bits, symmetric)
    if not search:
        return scale, zero
    best = _rounding_error(w, scale, zero, bits)
    for step in range(1, CLIP_SEARCH_STEPS + 1):
        shrink = 1.0 - CLIP_SEARCH_MAX_SHRINK * step / CLIP_SEARCH_STEPS
        candidate = _range_qparams(low * shrink, high * shrink, bits, symmetric)
        error = _rounding_error(w, *candidate, bits)
        better = error < best
        best = torch.where(better, error, best)
        scale = torch.where(better, candidate[0], scale)
        zero = torch.where(better, candidate[1], zero)
    return scale, zero


CLIP_SEARCH_STEPS = 40
"""Ranges tried by :func:`group_qparams`'s search, evenly spaced."""
CLIP_SEARCH_MAX_SHRINK = 0.5
"""The most a group's range may shrink in the search (a fraction of it)."""


def _range_qparams(low: torch.Tensor, high: torch.Tensor, bits: int, symmetric: bool
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row scale and zero point for ``[low, high]`` (symmetric: ``[-high, high]``)."""
    qmax = 2**bits - 1
    if symmetric:
        half = 2 ** (bits - 1)
        scale = _stored(high / (half - 1))
        return scale, torch.full_like(scale, float(half))
    scale = _stored((high - low) / qmax)
    zero = torch.round(-low / scale).clamp(0, qmax) + 0.0  # + 0.0: never -0.0
    return scale, zero


def _rounding_error(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int
                    ) -> torch.Tensor:
    """Per-row sum of squared differences between ``w`` and its quantized value."""
    codes = quantize_to_grid(w, scale, zero, bits)
    return ((codes - zero.unsqueeze(1)) * scale.unsqueeze(1) - w).square().sum(dim=1)


def _stored(scale: torch.Tensor) -> torch.Tensor:
    """The scale as it is stored (float16, at least 1e-8), back in float32."""
    return scale.clamp_min(1e-8).to(torch.float16).to(torch.float32)


def rtn_group_codes(weight: torch.Tensor, bits: int, group_size: int, *, symmetric: bool,
                    search: bool = False) -> GroupCodes:
    """Round-to-nearest group-wise quantization of a 2-D weight (``search``: each group's
    range chosen by :func:`group_qparams`'s rounding-error search).

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
        scale, zero = group_qparams(block, bits, symmetric=symmetric, search=search)
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
