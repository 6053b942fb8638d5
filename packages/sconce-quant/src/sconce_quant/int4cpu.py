"""ATen's int4 CPU kernel (``_weight_int4pack_mm_for_cpu``, torchao's CPU int4 layout).

The kernel multiplies bfloat16 activations by int4 codes held in its own layout (two codes
per byte, rows interleaved in blocks whose width depends on the CPU's vector unit), with one
bfloat16 scale and offset per group of 32-256 inputs: ``w = (code - 8) * scale + offset``. It
runs on torch's own threads, so a decoding step's hundreds of small calls cost no hand-off to
another runtime. Measured on SmolLM2-135M's 120 decoder layer shapes with random codes
(AVX2, 2 threads, one token, each layer's weights its own, so they come from memory):
10.8 ms per token against 13.9 ms through ONNX Runtime's ``MatMulNBits`` and 35 ms in
float32. With float32 activations the same kernel is 13x slower (it has no vectorized
float32 path), so activations are rounded to bfloat16 (a relative output error of about
3e-3 on a random 1536 x 576 layer, half of ``MatMulNBits``'s int8-activation error).

The kernel's layout is the only copy of the codes a :class:`~sconce_quant.modules.
WeightOnlyLinear` keeps while it runs: it is the same size as sconce's portable packing (one
byte per two codes, ``(out_features, in_features / 2)``), so a layer repacks its ``qweight``
buffer in place (:func:`to_kernel_layout`) and converts back for saving
(:func:`from_kernel_layout`). The layout is not documented and differs between CPUs (AVX2,
AVX-512), so it is never written to a file; the way back is found by asking the kernel's own
packing where each code goes (:func:`_nibble_sources`), not by assuming a layout.

Example:
    >>> import torch
    >>> codes = torch.randint(0, 16, (64, 64), dtype=torch.uint8)
    >>> packed = to_kernel_layout(codes)
    >>> packed.shape, torch.equal(from_kernel_layout(packed, 64), codes)
    (torch.Size([64, 32]), True)
"""

from __future__ import annotations

import functools
import math

import torch

from sconce.lowbit import pack_int4, unpack_int4

GROUP_SIZES: tuple[int, ...] = (32, 64, 128, 256)
"""Group sizes the kernel accepts."""

ROW_CHUNK = 64
"""Rows packed independently of the others: a multiple of every CPU's block width (32 on
AVX2, 64 on AVX-512), so row ranges starting at multiples of it are packed as if alone."""

MAX_ROWS = 64
"""Input rows from which a layer dequantizes and runs a float matmul instead (the kernel is
built for few rows: at 512 rows of a 3072 x 576 layer it takes 26 ms against 16 ms)."""


def int4cpu_unavailable(bits: int, group_size: int, in_features: int, out_features: int
                        ) -> str | None:
    """Why the kernel cannot run a layer of this format, or None when it can.

    Example:
        >>> int4cpu_unavailable(4, 64, 576, 192) is None, int4cpu_unavailable(8, 64, 576, 192)
        (True, 'it runs 4-bit codes only')
    """
    if not hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu"):
        return "this torch has no _weight_int4pack_mm_for_cpu"
    if bits != 4:
        return "it runs 4-bit codes only"
    if group_size not in GROUP_SIZES or in_features % group_size:
        return (f"it needs groups of {', '.join(map(str, GROUP_SIZES))} inputs that fill every "
                "row")
    if out_features % 16:
        return "it needs a multiple of 16 outputs"
    return None


def to_kernel_layout(codes: torch.Tensor) -> torch.Tensor:
    """Unpacked ``(N, K)`` codes (0..15) in the kernel's layout: ``(N, K / 2)`` uint8."""
    return torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes.to(torch.int32), 1)


def repack_to_kernel(stored: torch.Tensor, in_features: int) -> None:
    """Repack sconce's packed int4 codes (:func:`sconce.lowbit.pack_int4`) in place into the
    kernel's layout (the same size)."""
    stored.copy_(to_kernel_layout(unpack_int4(stored, in_features)))


def repack_to_portable(stored: torch.Tensor, in_features: int) -> None:
    """Repack codes in the kernel's layout in place back into sconce's own packing."""
    stored.copy_(pack_int4(from_kernel_layout(stored, in_features)))


def from_kernel_layout(packed: torch.Tensor, in_features: int) -> torch.Tensor:
    """The unpacked ``(N, in_features)`` uint8 codes that :func:`to_kernel_layout` packed."""
    rows, device = packed.shape[0], packed.device
    packed = packed.cpu()
    codes = torch.empty(rows, in_features, dtype=torch.uint8)
    for start in range(0, rows, ROW_CHUNK):
        chunk = packed[start:start + ROW_CHUNK].reshape(-1)
        nibbles = torch.stack((chunk & 15, chunk >> 4), dim=-1).reshape(-1)
        flat = codes[start:start + ROW_CHUNK].view(-1)
        flat[_nibble_sources(min(ROW_CHUNK, rows - start), in_features)] = nibbles
    return codes.to(device)


@functools.lru_cache(maxsize=32)
def _nibble_sources(rows: int, in_features: int) -> torch.Tensor:
    """For each nibble of a ``(rows, in_features)`` block in the kernel's layout (low nibble
    first), the flat index of the code it holds: the block's flat indices are packed one
    hexadecimal digit at a time, and each packed nibble reads back that digit of its source."""
    index = torch.arange(rows * in_features).reshape(rows, in_features)
    sources = torch.zeros(rows * in_features, dtype=torch.int64)
    for digit in range(max(1, math.ceil(math.log(rows * in_features, 16)))):
        packed = to_kernel_layout((index >> (4 * digit)) & 15).reshape(-1)
        nibbles = torch.stack((packed & 15, packed >> 4), dim=-1).reshape(-1)
        sources |= nibbles.to(torch.int64) << (4 * digit)
    return sources


def scale_and_offset(scales: torch.Tensor, zeros: torch.Tensor) -> torch.Tensor:
    """sconce's per-group scales and zero points ``(N, groups)`` as the kernel's bfloat16
    ``(groups, N, 2)``: ``(code - zero) * scale = (code - 8) * scale + (8 - zero) * scale``.

    Example:
        >>> scale_and_offset(torch.tensor([[0.5]]), torch.tensor([[6]])).tolist()
        [[[0.5, 1.0]]]
    """
    scale = scales.float()
    offset = (8 - zeros.float()) * scale
    return torch.stack((scale.t(), offset.t()), dim=-1).to(torch.bfloat16).contiguous()


class Int4CpuKernel:
    """One layer (or a stack of sibling layers) on ATen's int4 CPU kernel.

    Args:
        packed: ``(N, K / 2)`` codes in the kernel's layout (read in place, not copied).
        scale_offset: ``(groups, N, 2)`` bfloat16 (:func:`scale_and_offset`).
        group_size: inputs per group.
        bias: ``(N,)`` float32 or None.

    Example:
        >>> from sconce_quant.qparams import rtn_group_codes
        >>> codes = rtn_group_codes(torch.randn(64, 64), 4, 32, symmetric=False)
        >>> kernel = Int4CpuKernel(to_kernel_layout(codes.codes),
        ...                        scale_and_offset(codes.scales, codes.zeros), 32, None)
        >>> x = torch.randn(2, 64)
        >>> bool(torch.allclose(kernel(x), x @ codes.dequantize().t(), rtol=0.02, atol=0.05))
        True
    """

    def __init__(self, packed: torch.Tensor, scale_offset: torch.Tensor, group_size: int,
                 bias: torch.Tensor | None) -> None:
        self.packed = packed
        self.scale_offset = scale_offset
        self.group_size = group_size
        self.bias = None if bias is None else bias.float()
        # the op's default overload, resolved once: a decoding step makes ~100 calls
        self._matmul = torch.ops.aten._weight_int4pack_mm_for_cpu.default

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        try:
            out = self._matmul(x.reshape(-1, x.shape[-1]).to(torch.bfloat16), self.packed,
                               self.group_size, self.scale_offset).to(x.dtype)
        except RuntimeError as exc:  # ATen's own message names its packed layout, not ours
            if x.shape[-1] != 2 * self.packed.shape[1]:
                raise RuntimeError(f"this int4 layer takes {2 * self.packed.shape[1]} input "
                                   f"features, the input has {x.shape[-1]}") from exc
            raise
        if self.bias is not None:
            out += self.bias
        return out.view(*x.shape[:-1], out.shape[-1])

