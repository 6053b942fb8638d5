"""``WeightOnlyLinear``: a Linear layer whose weight is stored as int8 or packed int4 codes.

The weight is kept as unsigned codes (two per byte for int4), one float16 scale and one uint8
zero point per group of ``group_size`` inputs of each row; the forward pass dequantizes it on
the fly (``(codes - zero) * scale``) and runs a float matmul, so memory holds the small form.

Example:
    >>> import torch
    >>> from sconce_quant.qparams import rtn_group_codes
    >>> linear = torch.nn.Linear(8, 3)
    >>> layer = WeightOnlyLinear.from_codes(rtn_group_codes(linear.weight, 4, 4, symmetric=False),
    ...                                     linear.bias)
    >>> layer.qweight.shape, layer.qweight.dtype  # 8 int4 codes per row in 4 bytes
    (torch.Size([3, 4]), torch.uint8)
    >>> bool((layer.dequantized_weight() - linear.weight).abs().max() < 0.2)
    True
"""

from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F
from torch import nn

from sconce_quant.packing import pack_int4, unpack_int4
from sconce_quant.qparams import GroupCodes, dequantize_groups

logger = logging.getLogger(__name__)


class WeightOnlyLinear(nn.Module):
    """A Linear layer with int8 or int4 group-quantized weights, dequantized on the fly.

    Args:
        in_features, out_features: the layer's shape.
        bits: 4 (packed two per byte) or 8.
        group_size: inputs per scale/zero-point group.
        bias: whether the layer has a (float) bias.

    Example:
        >>> layer = WeightOnlyLinear(8, 2, bits=4, group_size=8)
        >>> layer.qweight.shape, layer(torch.randn(3, 8)).shape
        (torch.Size([2, 4]), torch.Size([3, 2]))
    """

    def __init__(self, in_features: int, out_features: int, *, bits: int, group_size: int,
                 bias: bool = True) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.bits = bits
        self.group_size = group_size
        groups = math.ceil(in_features / group_size)
        columns = math.ceil(in_features / 2) if bits == 4 else in_features
        self.register_buffer("qweight", torch.zeros(out_features, columns, dtype=torch.uint8))
        self.register_buffer("scales", torch.zeros(out_features, groups, dtype=torch.float16))
        self.register_buffer("zeros", torch.zeros(out_features, groups, dtype=torch.uint8))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    @classmethod
    def from_codes(cls, codes: GroupCodes, bias: torch.Tensor | None) -> WeightOnlyLinear:
        """A layer holding ``codes`` (packed when 4-bit) and a copy of ``bias``."""
        out_features, in_features = codes.codes.shape
        layer = cls(in_features, out_features, bits=codes.bits, group_size=codes.group_size,
                    bias=bias is not None)
        stored = pack_int4(codes.codes) if codes.bits == 4 else codes.codes.to(torch.uint8)
        layer.qweight.copy_(stored)
        layer.scales.copy_(codes.scales.to(torch.float16))
        layer.zeros.copy_(codes.zeros.to(torch.uint8))
        if bias is not None and layer.bias is not None:
            with torch.no_grad():
                layer.bias.copy_(bias.detach().to(torch.float32))
        return layer

    def codes(self) -> torch.Tensor:
        """The unsigned codes, unpacked: ``(out_features, in_features)`` uint8."""
        if self.bits == 4:
            return unpack_int4(self.qweight, self.in_features)
        return self.qweight

    def dequantized_weight(self) -> torch.Tensor:
        """The float32 weight the codes stand for."""
        return dequantize_groups(self.codes(), self.scales, self.zeros, self.group_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.dequantized_weight().to(x.dtype)
        return F.linear(x, weight, None if self.bias is None else self.bias.to(x.dtype))

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bits={self.bits}, group_size={self.group_size}, "
                f"bias={self.bias is not None}")
