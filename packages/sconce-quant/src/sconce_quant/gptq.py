"""GPTQ: quantize a layer's weight column by column, correcting the rest with the Hessian.

For the layer-wise error ``||W X - Q X||^2`` with ``H = 2 X X^T``, GPTQ (Frantar et al., 2022)
rounds one input column at a time and spreads its rounding error over the columns not yet
quantized, weighted by the inverse Hessian (through its upper Cholesky factor, computed once),
in blocks of columns whose updates are applied lazily. Group-wise scales are chosen when a
group's first column is reached, from the already-corrected weights; with ``act_order``
columns go in decreasing Hessian-diagonal order and group parameters are fixed beforehand.

Example:
    >>> import torch
    >>> torch.manual_seed(0) and None
    >>> x = torch.randn(256, 16) @ torch.randn(16, 16)  # correlated inputs
    >>> w = torch.randn(8, 16)
    >>> h = 2 * x.t() @ x / x.shape[0]
    >>> settings = GPTQSettings(bits=4, group_size=8)
    >>> gptq = gptq_quantize(w, h, settings).dequantize()
    >>> from sconce_quant.qparams import rtn_group_codes
    >>> rtn = rtn_group_codes(w, 4, 8, symmetric=False).dequantize()
    >>> bool(((gptq - w) @ x.t()).norm() < ((rtn - w) @ x.t()).norm())
    True
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch

from sconce.layerwise import damped_inverse
from sconce.lowbit import GroupCodes, grid_for, quantize_to_grid

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class GPTQSettings:
    """GPTQ's knobs.

    Attributes:
        bits: 4 or 8.
        group_size: inputs per scale group (0 or less: one group per row).
        symmetric: zero point fixed at the middle code (else per-group min/max).
        damp: diagonal dampening, as a fraction of the Hessian's mean diagonal.
        block_size: columns updated together before the lazy batch update.
        act_order: quantize columns with the largest Hessian diagonal first.
        clip_search: choose each group's range by the least rounding error (it may clip
            outliers), not by its min/max.

    Example:
        >>> GPTQSettings(bits=8, group_size=0).group_size
        0
    """

    bits: int = 4
    group_size: int = 128
    symmetric: bool = False
    damp: float = 0.01
    block_size: int = 128
    act_order: bool = True
    clip_search: bool = True


def gptq_quantize(weight: torch.Tensor, hessian: torch.Tensor, settings: GPTQSettings
                  ) -> GroupCodes:
    """Quantize a ``(out, in)`` weight with GPTQ given its ``(in, in)`` Hessian.

    Returns:
        The group-wise codes (float16 scales, uint8 zero points), in the original column
        order.

    Example:
        >>> x = torch.randn(64, 8)
        >>> codes = gptq_quantize(torch.randn(4, 8), 2 * x.t() @ x / 64, GPTQSettings(group_size=4))
        >>> codes.codes.shape, codes.scales.shape
        (torch.Size([4, 8]), torch.Size([4, 2]))
    """
    w, h = _with_dead_columns_zeroed(weight, hessian)
    rows, cols = w.shape
    group = cols if settings.group_size <= 0 else settings.group_size
    groups = -(-cols // group)
    scales = torch.zeros(rows, groups)
    zeros = torch.zeros(rows, groups)
    if settings.act_order:
        for g in range(groups):  # static groups: parameters from the original weights
            scales[:, g], zeros[:, g] = grid_for(w[:, g * group:(g + 1) * group],
                                                 settings.bits, symmetric=settings.symmetric,
                                                 search=settings.clip_search)
    codes = torch.zeros(rows, cols, dtype=torch.uint8)

    def round_column(original: int, rest: torch.Tensor) -> torch.Tensor:
        g = original // group
        if not settings.act_order and original % group == 0:
            scales[:, g], zeros[:, g] = grid_for(rest[:, :group], settings.bits,
                                                 symmetric=settings.symmetric,
                                                 search=settings.clip_search)
        q = quantize_to_grid(rest[:, :1], scales[:, g], zeros[:, g], settings.bits).squeeze(1)
        codes[:, original] = q.to(torch.uint8)
        return (q - zeros[:, g]) * scales[:, g]

    block = group * max(1, settings.block_size // group) if not settings.act_order \
        else settings.block_size
    _run_columns(w, h, settings.act_order, settings.damp, block, round_column)
    return GroupCodes(codes, scales.to(torch.float16), zeros.to(torch.uint8), settings.bits,
                      group)


def gptq_round_symmetric(weight: torch.Tensor, hessian: torch.Tensor, scale: torch.Tensor,
                         qmax: int, *, damp: float = 0.01, act_order: bool = True,
                         block_size: int = 128) -> torch.Tensor:
    """GPTQ onto a fixed symmetric grid: each row's values become ``code * scale[row]`` with
    integer codes in ``[-qmax, qmax]``, chosen column by column to keep ``||W X - Q X||``
    small (not each weight's nearest code).

    For an engine that quantizes the returned float weight itself: with ``scale`` equal to
    its own (``max|w| / qmax`` per row, or one value for the tensor) and each row's largest
    weight kept (the caller puts it back), the engine recovers exactly these codes.

    Args:
        weight: ``(out, in)`` float weight.
        hessian: ``(in, in)``, ``2 X X^T`` over the layer's inputs.
        scale: ``(out,)`` per-row steps, or a single step for every row.
        qmax: the largest code (64 for 7-bit, 127 for 8-bit symmetric).

    Returns:
        The rounded ``(out, in)`` weight (float32), in the original column order.

    Example:
        >>> torch.manual_seed(0) and None
        >>> x = torch.randn(256, 16) @ torch.randn(16, 16)
        >>> w = torch.randn(8, 16)
        >>> step = w.abs().amax(dim=1) / 7
        >>> q = gptq_round_symmetric(w, 2 * x.t() @ x / 256, step, 7)
        >>> bool(torch.allclose(q / step[:, None], (q / step[:, None]).round(), atol=1e-4))
        True
        >>> nearest = (w / step[:, None]).round() * step[:, None]
        >>> bool(((q - w) @ x.t()).norm() < ((nearest - w) @ x.t()).norm())
        True
    """
    w, h = _with_dead_columns_zeroed(weight, hessian)
    step = torch.as_tensor(scale, dtype=torch.float32).reshape(-1).expand(w.shape[0])
    step = step.clamp_min(torch.finfo(torch.float32).tiny)
    rounded = torch.zeros_like(w)

    def round_column(original: int, rest: torch.Tensor) -> torch.Tensor:
        q = torch.round(rest[:, 0] / step).clamp_(-qmax, qmax) * step
        rounded[:, original] = q
        return q

    _run_columns(w, h, act_order, damp, block_size, round_column)
    return rounded


def _with_dead_columns_zeroed(weight: torch.Tensor, hessian: torch.Tensor
                              ) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 copies; inputs that never fire (zero Hessian diagonal) get weight 0 and a unit
    diagonal, so the factorization stays defined."""
    w = weight.detach().to(torch.float32).clone()
    h = hessian.detach().to(torch.float32).clone()
    dead = torch.diagonal(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    return w, h


def _run_columns(w: torch.Tensor, h: torch.Tensor, act_order: bool, damp: float, block: int,
                 round_column: Callable[[int, torch.Tensor], torch.Tensor]) -> None:
    """GPTQ's column loop: ``round_column(original_index, remaining_block_columns)`` rounds
    the first remaining column and returns its rounded values; the rounding error is spread
    over the columns not yet rounded (within the block at once, beyond it lazily)."""
    cols = w.shape[1]
    order = torch.arange(cols)
    if act_order:
        order = torch.argsort(torch.diagonal(h), descending=True)
        w = w[:, order]
        h = h[order][:, order]
    upper = damped_inverse(h, damp, cholesky=True)
    for start in range(0, cols, block):
        end = min(start + block, cols)
        w1 = w[:, start:end].clone()
        errors = torch.zeros_like(w1)
        h1 = upper[start:end, start:end]
        for i in range(end - start):
            values = w1[:, i]
            error = (values - round_column(int(order[start + i]), w1[:, i:])) / h1[i, i]
            w1[:, i:] -= error.unsqueeze(1) * h1[i, i:].unsqueeze(0)
            errors[:, i] = error
        w[:, end:] -= errors @ upper[start:end, end:]
