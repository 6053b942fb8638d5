"""Low-bit weights shared by the plugins: group-wise integer codes, int4 packing, a Linear
layer that stores them, and its true size.

A weight matrix ``(out, in)`` is stored as unsigned ``bits``-bit codes with one float16 scale
and one integer zero point per group of ``group_size`` consecutive inputs of each row:
``weight ~= (code - zero) * scale``. Zero points are integers, so a weight of exactly 0 (a
pruned one) is stored exactly. 4-bit codes are packed two per byte (the low nibble holds the
even column), so a layer's bytes in memory and on disk are its true size.
:class:`LowBitLinear` dequantizes on the fly; :func:`lowbit_footprint` reports its true bytes
to the size metrics (the core's built-in ``sconce_module_footprint``).

Plugins that quantize (``quant.weight_only``, ``prune.sparsegpt`` with ``bits``) build
:class:`GroupCodes` with their own algorithm and store them here; engines with real low-bit
kernels repack the same codes into their own layout.

Example:
    >>> import torch
    >>> weight = torch.tensor([[0.0, 0.4, -1.0, 2.0]])
    >>> codes = GroupCodes.quantize(weight, bits=4, group_size=4)
    >>> codes.dequantize()  # 0 stays exactly 0; scale 3/15 = 0.2 (float16: 0.19995)
    tensor([[ 0.0000,  0.3999, -0.9998,  1.9995]])
    >>> layer = LowBitLinear.from_codes(codes)
    >>> layer.qweight  # four 4-bit codes in two bytes
    tensor([[117, 240]], dtype=torch.uint8)
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from sconce.errors import ConfigError
from sconce.footprint import Footprint, tensor_nbytes, tensor_nonzero

logger = logging.getLogger(__name__)

__all__ = ["CLIP_SEARCH_MAX_SHRINK", "CLIP_SEARCH_STEPS", "LOWBIT_BITS", "GroupCodes",
           "LowBitLinear", "dequantize_groups", "grid_for", "lowbit_footprint", "pack_int4",
           "quantize_to_grid", "rounding_error", "unpack_int4"]

LOWBIT_BITS: tuple[int, ...] = (4, 8)
"""Bit widths :class:`LowBitLinear` stores (4: two codes per byte; 8: one)."""


def _check_bits(bits: int) -> None:
    if bits not in LOWBIT_BITS:
        raise ConfigError(f"bits must be one of {', '.join(map(str, LOWBIT_BITS))}; got {bits!r}")


def grid_for(weight: torch.Tensor, bits: int, *, symmetric: bool = False, search: bool = False
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row scale and zero point (float32 tensors of shape ``(rows,)``) for a ``(rows,
    cols)`` block, from each row's range widened to include 0.

    Asymmetric: ``[min, max]`` onto ``[0, 2**bits - 1]``; symmetric: ``[-max|w|, max|w|]``
    with the zero point in the middle. Scales are rounded to float16, as they are stored.
    With ``search``, each row's range is also tried shrunk (down to ``1 -``
    :data:`CLIP_SEARCH_MAX_SHRINK` of itself) and the range with the least squared rounding
    error is kept: clipping a few outliers buys a finer grid for every other weight. Zero
    stays exactly representable either way (pruned weights stay pruned).

    Example:
        >>> grid_for(torch.tensor([[-1.0, 2.0], [0.5, 1.5]]), 4)
        (tensor([0.2000, 0.1000]), tensor([5., 0.]))
        >>> w = torch.randn(4, 128, generator=torch.Generator().manual_seed(0))
        >>> plain, searched = grid_for(w, 4), grid_for(w, 4, search=True)
        >>> bool((rounding_error(w, *searched, 4) <= rounding_error(w, *plain, 4)).all())
        True
    """
    _check_bits(bits)
    w = weight.detach().to(torch.float32)
    if symmetric:
        high = w.abs().amax(dim=1)
        low = -high
    else:
        low = w.amin(dim=1).clamp_max(0.0)
        high = w.amax(dim=1).clamp_min(0.0)
    scale, zero = _range_grid(low, high, bits, symmetric)
    if not search:
        return scale, zero
    best = rounding_error(w, scale, zero, bits)
    for step in range(1, CLIP_SEARCH_STEPS + 1):
        shrink = 1.0 - CLIP_SEARCH_MAX_SHRINK * step / CLIP_SEARCH_STEPS
        candidate = _range_grid(low * shrink, high * shrink, bits, symmetric)
        error = rounding_error(w, *candidate, bits)
        better = error < best
        best = torch.where(better, error, best)
        scale = torch.where(better, candidate[0], scale)
        zero = torch.where(better, candidate[1], zero)
    return scale, zero


CLIP_SEARCH_STEPS = 40
"""Ranges tried by :func:`grid_for`'s search, evenly spaced."""
CLIP_SEARCH_MAX_SHRINK = 0.5
"""The most a row's range may shrink in the search (a fraction of it)."""


def _range_grid(low: torch.Tensor, high: torch.Tensor, bits: int, symmetric: bool
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row scale (float16-exact) and zero point for ``[low, high]`` (``low <= 0 <= high``;
    symmetric: ``[-high, high]``)."""
    top = 2**bits - 1
    if symmetric:
        half = 2 ** (bits - 1)
        scale = high / (half - 1)
    else:
        scale = (high - low) / top
    scale = scale.to(torch.float16).to(torch.float32)
    # a row of zeros (all pruned), or a range below float16's smallest step: any scale
    # stores it, and 1 keeps the codes finite
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    if symmetric:
        return scale, torch.full_like(scale, float(2 ** (bits - 1)))
    return scale, (-low / scale).round().clamp(0, top) + 0.0  # + 0.0: never -0.0


def rounding_error(weight: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int
                   ) -> torch.Tensor:
    """Per-row sum of squared differences between ``weight`` and its value on the grid.

    Example:
        >>> rounding_error(torch.tensor([[0.25, 1.0]]), torch.tensor([0.5]), torch.tensor([0.0]), 4)
        tensor([0.0625])
    """
    codes = quantize_to_grid(weight.to(torch.float32), scale, zero, bits)
    return ((codes - zero.unsqueeze(1)) * scale.unsqueeze(1) - weight).square().sum(dim=1)


def quantize_to_grid(weight: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int
                     ) -> torch.Tensor:
    """Codes (as float) of a ``(rows, cols)`` block on per-row ``scale`` / ``zero`` grids.

    Example:
        >>> quantize_to_grid(torch.tensor([[0.3, -9.0]]), torch.tensor([0.2]),
        ...                  torch.tensor([5.0]), 4)
        tensor([[7., 0.]])
    """
    codes = torch.round(weight / scale.unsqueeze(1)) + zero.unsqueeze(1)
    return codes.clamp_(0, 2**bits - 1)


@dataclass(frozen=True)
class GroupCodes:
    """A weight as unsigned codes with one scale and zero point per group of inputs.

    Attributes:
        codes: ``(out, in)`` uint8 codes in ``[0, 2**bits - 1]``.
        scales: ``(out, groups)`` float16 scales.
        zeros: ``(out, groups)`` uint8 zero points.
        bits: 4 or 8.
        group_size: inputs per group (the last group may be shorter).

    Example:
        >>> codes = GroupCodes.quantize(torch.randn(3, 10), bits=8, group_size=4)
        >>> codes.scales.shape, codes.codes.dtype
        (torch.Size([3, 3]), torch.uint8)
    """

    codes: torch.Tensor
    scales: torch.Tensor
    zeros: torch.Tensor
    bits: int
    group_size: int

    @classmethod
    def quantize(cls, weight: torch.Tensor, *, bits: int, group_size: int,
                 symmetric: bool = False) -> GroupCodes:
        """Round-to-nearest codes of a 2-D weight, each group on its own min/max grid
        (``group_size`` 0 or less: one group per row).

        Example:
            >>> GroupCodes.quantize(torch.ones(2, 6), bits=4, group_size=0).scales.shape
            torch.Size([2, 1])
        """
        rows, cols = weight.shape
        group = cols if group_size <= 0 else group_size
        codes = torch.empty(rows, cols, dtype=torch.uint8)
        scales, zeros = [], []
        for start in range(0, cols, group):
            block = weight[:, start:start + group]
            scale, zero = grid_for(block, bits, symmetric=symmetric)
            codes[:, start:start + group] = quantize_to_grid(block.to(torch.float32), scale,
                                                             zero, bits).to(torch.uint8)
            scales.append(scale)
            zeros.append(zero)
        return cls(codes, torch.stack(scales, 1).to(torch.float16),
                   torch.stack(zeros, 1).to(torch.uint8), bits, group)

    def dequantize(self) -> torch.Tensor:
        """The float32 weight the codes stand for."""
        return dequantize_groups(self.codes, self.scales, self.zeros, self.group_size)


def dequantize_groups(codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
                      group_size: int) -> torch.Tensor:
    """``(codes - zeros) * scales`` with each group's parameters repeated over its columns.

    Example:
        >>> dequantize_groups(torch.tensor([[9, 7]], dtype=torch.uint8),
        ...                   torch.tensor([[0.5]]), torch.tensor([[8]], dtype=torch.uint8), 2)
        tensor([[ 0.5000, -0.5000]])
    """
    cols = codes.shape[1]
    scale = scales.to(torch.float32).repeat_interleave(group_size, dim=1)[:, :cols]
    zero = zeros.to(torch.float32).repeat_interleave(group_size, dim=1)[:, :cols]
    return (codes.to(torch.float32) - zero) * scale


def pack_int4(codes: torch.Tensor) -> torch.Tensor:
    """Two 4-bit codes per byte along the last dimension (odd lengths padded with 0).

    Raises:
        ConfigError: a code is outside 0..15.

    Example:
        >>> pack_int4(torch.tensor([[1, 2, 15]]))
        tensor([[33, 15]], dtype=torch.uint8)
    """
    if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) > 15):
        raise ConfigError("int4 codes must lie in 0..15; quantize with bits=4 before packing")
    values = codes.to(torch.uint8)
    if values.shape[-1] % 2:
        values = F.pad(values, (0, 1))
    return (values[..., 0::2] | (values[..., 1::2] << 4)).contiguous()


def unpack_int4(packed: torch.Tensor, length: int) -> torch.Tensor:
    """The ``length`` codes per row that :func:`pack_int4` packed (uint8).

    Uses remainder and floor division rather than bit operations, so it exports to ONNX
    with standard integer operators.

    Example:
        >>> unpack_int4(torch.tensor([[33, 15]], dtype=torch.uint8), 3)
        tensor([[ 1,  2, 15]], dtype=torch.uint8)
    """
    low = torch.remainder(packed, 16)
    high = torch.div(packed, 16, rounding_mode="floor")
    return torch.stack((low, high), dim=-1).flatten(-2)[..., :length].contiguous()


class LowBitLinear(nn.Module):
    """A Linear layer whose weight is stored as int8 or packed int4 group codes and
    dequantized on the fly (float matmul); the bias stays float.

    Args:
        in_features, out_features: the layer's shape.
        bits: 4 (packed two per byte) or 8.
        group_size: inputs per scale / zero-point group.
        bias: whether the layer has a bias.

    Example:
        >>> layer = LowBitLinear(6, 2, bits=4, group_size=4)
        >>> layer.qweight.shape, layer.scales.shape, layer(torch.randn(5, 6)).shape
        (torch.Size([2, 3]), torch.Size([2, 2]), torch.Size([5, 2]))
    """

    qweight: torch.Tensor
    scales: torch.Tensor
    zeros: torch.Tensor
    bias: nn.Parameter | None

    def __init__(self, in_features: int, out_features: int, *, bits: int, group_size: int,
                 bias: bool = True) -> None:
        super().__init__()
        _check_bits(bits)
        if group_size < 1:
            raise ConfigError(f"group_size must be a positive integer, got {group_size!r}")
        self.in_features = in_features
        self.out_features = out_features
        self.bits = bits
        self.group_size = group_size
        groups = math.ceil(in_features / group_size)
        stored = math.ceil(in_features / 2) if bits == 4 else in_features
        self.register_buffer("qweight", torch.zeros(out_features, stored, dtype=torch.uint8))
        self.register_buffer("scales", torch.zeros(out_features, groups, dtype=torch.float16))
        self.register_buffer("zeros", torch.zeros(out_features, groups, dtype=torch.uint8))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    @classmethod
    def from_codes(cls, codes: GroupCodes, bias: torch.Tensor | None = None) -> LowBitLinear:
        """A layer storing ``codes`` and a float32 copy of ``bias``.

        Example:
            >>> codes = GroupCodes.quantize(torch.randn(2, 8), bits=8, group_size=8)
            >>> LowBitLinear.from_codes(codes).qweight.shape
            torch.Size([2, 8])
        """
        out_features, in_features = codes.codes.shape
        layer = cls(in_features, out_features, bits=codes.bits, group_size=codes.group_size,
                    bias=bias is not None)
        layer.qweight.copy_(pack_int4(codes.codes) if codes.bits == 4 else codes.codes)
        layer.scales.copy_(codes.scales)
        layer.zeros.copy_(codes.zeros)
        if bias is not None and layer.bias is not None:
            with torch.no_grad():
                layer.bias.copy_(bias.detach().to(torch.float32))
        return layer

    def codes(self) -> GroupCodes:
        """The stored codes, unpacked."""
        codes = unpack_int4(self.qweight, self.in_features) if self.bits == 4 else self.qweight
        return GroupCodes(codes, self.scales, self.zeros, self.bits, self.group_size)

    def dequantized_weight(self) -> torch.Tensor:
        """The float32 ``(out_features, in_features)`` weight the codes stand for."""
        return self.codes().dequantize()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, self.dequantized_weight().to(x.dtype), bias)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bits={self.bits}, group_size={self.group_size}, bias={self.bias is not None}")


def lowbit_footprint(module: nn.Module) -> Footprint | None:
    """True storage of a :class:`LowBitLinear` (codes as packed, scales, zero points, bias),
    with its zero weights (codes equal to their zero point) counted as zeros; None for
    other modules.

    Example:
        >>> lowbit_footprint(LowBitLinear(256, 4, bits=4, group_size=128, bias=False))
        Footprint(params=1024, nonzero=0, nbytes=536)
    """
    if not isinstance(module, LowBitLinear):
        return None
    codes = module.codes()
    zero = codes.zeros.repeat_interleave(module.group_size, dim=1)[:, :module.in_features]
    params = module.in_features * module.out_features
    nonzero = int((codes.codes != zero).sum().item())
    nbytes = sum(tensor_nbytes(t) for t in (module.qweight, module.scales, module.zeros))
    if module.bias is not None:
        params += module.bias.numel()
        nonzero += tensor_nonzero(module.bias)
        nbytes += tensor_nbytes(module.bias)
    return Footprint(params, nonzero, nbytes)
