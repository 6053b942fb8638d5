"""Int4 packing: two 4-bit codes per byte, so stored and shipped sizes are true; and the
layout ONNX Runtime's low-bit matmul kernel reads (:func:`pack_nbits`).

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

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from sconce.errors import ConfigError
from sconce.lowbit import pack_int4, unpack_int4


@dataclass(frozen=True)
class NBitsWeight:
    """Group-quantized weights in ONNX Runtime's ``MatMulNBits`` layout.

    ``MatMulNBits`` (an ONNX Runtime contrib operator, run by MLAS's low-bit GEMM kernels)
    reads a ``(N, K)`` weight as ``N`` rows of ``blocks`` blocks of ``block_size`` inputs:
    the codes of a block packed ``8 // bits`` per byte (low nibble first for 4 bits), one
    float32 scale and one unsigned zero point per block (4-bit zero points packed two per
    byte along each row). ``K`` is padded to whole blocks with zero codes.

    Attributes:
        packed: ``(N, blocks, block_size * bits // 8)`` uint8.
        scales: ``(N, blocks)`` float32.
        zero_points: ``(N, ceil(blocks * bits / 8))`` uint8.
        in_features: ``K``, before padding.
        bits: 4 or 8.
        block_size: inputs per block (a power of two, at least 16).

    Example:
        >>> codes = torch.tensor([[1, 2, 3]], dtype=torch.uint8)
        >>> nbits = pack_nbits(codes, torch.ones(1, 1), torch.tensor([[8]]), bits=4,
        ...                    block_size=16)
        >>> nbits.packed.shape, nbits.packed[0, 0, :2].tolist(), nbits.zero_points.tolist()
        (torch.Size([1, 1, 8]), [33, 3], [[8]])
    """

    packed: torch.Tensor
    scales: torch.Tensor
    zero_points: torch.Tensor
    in_features: int
    bits: int
    block_size: int

    @property
    def out_features(self) -> int:
        """``N``, the rows."""
        return int(self.packed.shape[0])


def nbits_block_ok(group_size: int, in_features: int) -> bool:
    """Whether ``MatMulNBits`` can hold groups of ``group_size`` (0: whole rows of
    ``in_features``): a power of two of at least 16.

    Example:
        >>> nbits_block_ok(128, 576), nbits_block_ok(0, 576), nbits_block_ok(0, 512)
        (True, False, True)
    """
    size = in_features if group_size <= 0 else group_size
    return size >= 16 and size & (size - 1) == 0


def pack_nbits(codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, *, bits: int,
               block_size: int) -> NBitsWeight:
    """Pack ``(N, K)`` unsigned codes with per-group scales and zero points for ``MatMulNBits``.

    Raises:
        ConfigError: ``bits`` is not 4 or 8, ``block_size`` is not a power of two of at
            least 16, or a code does not fit ``bits``.

    Example:
        >>> codes = torch.randint(0, 16, (3, 40), dtype=torch.uint8)
        >>> scales, zeros = torch.rand(3, 3), torch.randint(0, 16, (3, 3), dtype=torch.uint8)
        >>> nbits = pack_nbits(codes, scales, zeros, bits=4, block_size=16)
        >>> back = unpack_nbits(nbits)
        >>> torch.equal(back[0], codes) and torch.equal(back[2], zeros)
        True
    """
    if bits not in (4, 8):
        raise ConfigError(f"MatMulNBits packs 4- or 8-bit codes, not {bits}-bit")
    if not nbits_block_ok(block_size, block_size):
        raise ConfigError(f"MatMulNBits blocks are powers of two of at least 16, not {block_size}")
    if codes.numel() and int(codes.max()) >= 2**bits:
        raise ConfigError(f"codes must lie in 0..{2**bits - 1} for {bits} bits")
    rows, cols = codes.shape
    blocks = -(-cols // block_size)
    padded = F.pad(codes.to(torch.uint8), (0, blocks * block_size - cols))
    if bits == 4:
        packed = pack_int4(padded).reshape(rows, blocks, block_size // 2)
        zero_points = pack_int4(zeros.to(torch.uint8))
    else:
        packed = padded.reshape(rows, blocks, block_size)
        zero_points = zeros.to(torch.uint8).contiguous()
    return NBitsWeight(packed.contiguous(), scales.to(torch.float32).contiguous(), zero_points,
                       cols, bits, block_size)


def unpack_nbits(weight: NBitsWeight) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The ``(codes, scales, zero points)`` a :class:`NBitsWeight` holds (inverse of
    :func:`pack_nbits`; scales as float32).

    Example:
        >>> nbits = pack_nbits(torch.tensor([[5, 9]], dtype=torch.uint8), torch.ones(1, 1),
        ...                    torch.tensor([[7]]), bits=8, block_size=16)
        >>> [t.tolist() for t in unpack_nbits(nbits)]
        [[[5, 9]], [[1.0]], [[7]]]
    """
    rows, blocks, _ = weight.packed.shape
    if weight.bits == 4:
        codes = unpack_int4(weight.packed.reshape(rows, -1), blocks * weight.block_size)
        zeros = unpack_int4(weight.zero_points, blocks)
    else:
        codes = weight.packed.reshape(rows, -1)
        zeros = weight.zero_points
    return codes[:, :weight.in_features].contiguous(), weight.scales, zeros.contiguous()


def nbits_from_stored(stored: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, *,
                      in_features: int, bits: int, block_size: int) -> NBitsWeight:
    """The ``MatMulNBits`` form of codes already stored row-wise (int4: two per byte, low
    nibble first; int8: one per byte), as :class:`~sconce_quant.modules.WeightOnlyLinear`
    keeps them.

    When ``in_features`` fills whole blocks, the stored bytes are already ``MatMulNBits``'s
    layout and ``packed`` is a view of ``stored`` (no copy: a kernel reading it shares the
    layer's memory); otherwise the rows are padded to whole blocks in a new tensor.

    Example:
        >>> codes = torch.randint(0, 16, (3, 32), dtype=torch.uint8)
        >>> stored = pack_int4(codes)
        >>> zeros = torch.full((3, 2), 8, dtype=torch.uint8)
        >>> view = nbits_from_stored(stored, torch.ones(3, 2), zeros, in_features=32, bits=4,
        ...                          block_size=16)
        >>> view.packed.data_ptr() == stored.data_ptr()
        True
        >>> torch.equal(view.packed, pack_nbits(codes, torch.ones(3, 2), zeros, bits=4,
        ...                                     block_size=16).packed)
        True
    """
    rows = stored.shape[0]
    if in_features % block_size or not stored.is_contiguous():
        codes = unpack_int4(stored, in_features) if bits == 4 else stored
        return pack_nbits(codes, scales, zeros, bits=bits, block_size=block_size)
    if bits not in (4, 8):
        raise ConfigError(f"MatMulNBits packs 4- or 8-bit codes, not {bits}-bit")
    blocks = in_features // block_size
    packed = stored.view(rows, blocks, block_size * bits // 8)
    zero_points = pack_int4(zeros.to(torch.uint8)) if bits == 4 else zeros.to(torch.uint8)
    return NBitsWeight(packed, scales.to(torch.float32).contiguous(), zero_points.contiguous(),
                       in_features, bits, block_size)
