"""Int4 packing: two 4-bit codes per byte, so stored and shipped sizes are true.

Codes are packed along the last dimension: byte ``j`` holds code ``2j`` in its low nibble and
code ``2j + 1`` in its high nibble; an odd last dimension is padded with a zero code.

Example:
    >>> import torch
    >>> codes = torch.tensor([[1, 2, 15]], dtype=torch.uint8)
    >>> packed = pack_int4(codes)
    >>> packed, packed.dtype
    (tensor([[33, 15]], dtype=torch.uint8), torch.uint8)
    >>> torch.equal(unpack_int4(packed, 3), codes)
    True
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sconce.errors import ConfigError


def pack_int4(codes: torch.Tensor) -> torch.Tensor:
    """Pack unsigned 4-bit codes (values 0..15, any integer dtype) two per uint8 byte.

    Raises:
        ConfigError: a code is outside 0..15.

    Example:
        >>> pack_int4(torch.tensor([[3, 12]]))
        tensor([[195]], dtype=torch.uint8)
    """
    if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) > 15):
        raise ConfigError("int4 codes must lie in 0..15; quantize with 4 bits before packing")
    values = codes.to(torch.uint8)
    if values.shape[-1] % 2:
        values = F.pad(values, (0, 1))
    low, high = values[..., 0::2], values[..., 1::2]
    return (low | (high << 4)).contiguous()


def unpack_int4(packed: torch.Tensor, length: int) -> torch.Tensor:
    """Unpack bytes from :func:`pack_int4` back to ``length`` uint8 codes per row.

    Written with remainder and floor division (not bit operations) so the unpacking exports
    to ONNX with standard integer operators.

    Example:
        >>> unpack_int4(torch.tensor([[195]], dtype=torch.uint8), 2)
        tensor([[ 3, 12]], dtype=torch.uint8)
    """
    low = torch.remainder(packed, 16)
    high = torch.div(packed, 16, rounding_mode="floor")
    codes = torch.stack((low, high), dim=-1).flatten(-2)
    return codes[..., :length].contiguous()
