"""SparseGPT (Frantar & Alistarh, 2023): one-shot pruning with OBS weight reconstruction.

For the layer-wise error ``||W X - W' X||^2`` (Hessian ``H = 2 X X^T``) the columns of ``W``
are visited left to right. Each pruned (or quantized) column's error is spread over the
columns not yet visited, weighted by the inverse Hessian through its upper Cholesky factor
(computed once), which is the Optimal Brain Surgeon update restricted to those columns.
Updates inside a block of columns are applied at once to the rest of the matrix (lazy
batching). The mask is chosen adaptively: at the start of each block, the block's weights with
the lowest OBS saliency ``w^2 / [H^-1]_cc^2`` are pruned (exact counts over the layer), or,
for N:M, at every ``m``-th column the ``m - n`` of the next ``m`` with the lowest saliency in
each row. With ``bits``, every kept weight is also rounded to a group-wise grid as it is
visited, and its rounding error is compensated the same way (joint pruning and
quantization, as in the paper's 50% + 4-bit results).

Example:
    >>> import torch
    >>> torch.manual_seed(0) and None
    >>> x = torch.randn(512, 32) @ torch.randn(32, 32)  # correlated inputs
    >>> w = torch.randn(16, 32)
    >>> h = 2 * x.t() @ x / len(x)
    >>> pruned = sparsegpt_prune(w, h, SparseGPTSettings(sparsity=0.5)).weight
    >>> float((pruned == 0).float().mean())
    0.5
    >>> from sconce_prune.oneshot.wanda import wanda_prune
    >>> wanda = wanda_prune(w, torch.diagonal(h), sparsity=0.5)
    >>> bool(((pruned - w) @ x.t()).norm() < ((wanda - w) @ x.t()).norm())
    True
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch

from sconce.layerwise import damped_inverse
from sconce.lowbit import GroupCodes, grid_for, quantize_to_grid
from sconce_prune.oneshot.patterns import lowest

logger = logging.getLogger(__name__)

__all__ = ["SparseGPTResult", "SparseGPTSettings", "sparsegpt_prune"]


@dataclass(frozen=True)
class SparseGPTSettings:
    """SparseGPT's knobs.

    Attributes:
        sparsity: fraction of the weights pruned (unstructured).
        n, m: N:M instead (``n`` of every ``m`` consecutive inputs kept); ``m`` 0: unstructured.
        block_size: columns per lazy-update block (rounded to whole quantization groups and
            N:M groups).
        damp: Hessian dampening, a fraction of its mean diagonal.
        bits: None, or 4 / 8 to quantize the kept weights jointly.
        group_size: inputs per quantization group.
        symmetric: symmetric quantization grids (else each group's min/max, with 0 exact).

    Example:
        >>> SparseGPTSettings(n=2, m=4).pruned_fraction
        0.5
    """

    sparsity: float = 0.5
    n: int = 0
    m: int = 0
    block_size: int = 128
    damp: float = 0.01
    bits: int | None = None
    group_size: int = 128
    symmetric: bool = False

    @property
    def pruned_fraction(self) -> float:
        """The fraction of weights pruned: ``sparsity``, or ``1 - n/m``."""
        return 1.0 - self.n / self.m if self.m else self.sparsity


@dataclass(frozen=True)
class SparseGPTResult:
    """What :func:`sparsegpt_prune` returns.

    Attributes:
        weight: the pruned (and, with ``bits``, dequantized) float32 weight.
        codes: with ``bits``: the quantized codes (pruned weights hold their zero point).
    """

    weight: torch.Tensor
    codes: GroupCodes | None = None


def _block_size(settings: SparseGPTSettings, cols: int) -> int:
    unit = 1
    if settings.bits is not None:
        unit = min(settings.group_size, cols)
    if settings.m:
        unit = unit * settings.m // math.gcd(unit, settings.m)
    return unit * max(1, settings.block_size // unit)


def sparsegpt_prune(weight: torch.Tensor, hessian: torch.Tensor,
                    settings: SparseGPTSettings) -> SparseGPTResult:
    """Prune (and optionally quantize) a ``(rows, cols)`` weight given its ``(cols, cols)``
    Hessian; N:M needs ``cols`` to be a multiple of ``m``.

    Example:
        >>> w = torch.randn(4, 8)
        >>> x = torch.randn(64, 8)
        >>> result = sparsegpt_prune(w, 2 * x.t() @ x / 64, SparseGPTSettings(n=2, m=4, bits=4))
        >>> int((result.weight.reshape(4, 2, 4) != 0).sum(-1).max()) <= 2, result.codes.bits
        (True, 4)
    """
    w = weight.detach().to(torch.float32).clone()
    rows, cols = w.shape
    dead = torch.diagonal(hessian) == 0
    w[:, dead] = 0.0
    upper = damped_inverse(hessian, settings.damp, cholesky=True)
    quantize = settings.bits is not None
    group = min(settings.group_size, cols) if quantize else cols
    groups = -(-cols // group)
    codes = torch.zeros(rows, cols, dtype=torch.uint8) if quantize else None
    scales = torch.zeros(rows, groups)
    zeros = torch.zeros(rows, groups)
    block = _block_size(settings, cols)
    target = round(settings.sparsity * rows * cols)
    pruned_so_far = 0
    for start in range(0, cols, block):
        end = min(start + block, cols)
        w1 = w[:, start:end].clone()
        h1 = upper[start:end, start:end]
        errors = torch.zeros_like(w1)
        diag = torch.diagonal(h1)
        if settings.m:
            mask = torch.zeros_like(w1, dtype=torch.bool)
        else:  # this block's share of the exact layer-wide count, by OBS saliency
            count = round(target * end / cols) - pruned_so_far
            mask = lowest(w1.square() / diag.square().unsqueeze(0), count)
            pruned_so_far += count
        for i in range(end - start):
            column = start + i
            if settings.m and i % settings.m == 0:
                scores = w1[:, i:i + settings.m].square() / diag[i:i + settings.m].square()
                cut = torch.topk(scores, settings.m - settings.n, dim=1, largest=False).indices
                mask[:, i:i + settings.m].scatter_(1, cut, True)
            values = w1[:, i]
            kept = values.masked_fill(mask[:, i], 0.0)
            if quantize and codes is not None and settings.bits is not None:
                g = column // group
                if column % group == 0:
                    span = w1[:, i:i + group].masked_fill(mask[:, i:i + group], 0.0)
                    scales[:, g], zeros[:, g] = grid_for(span, settings.bits,
                                                         symmetric=settings.symmetric)
                q = quantize_to_grid(kept.unsqueeze(1), scales[:, g], zeros[:, g],
                                     settings.bits).squeeze(1)
                q = torch.where(mask[:, i], zeros[:, g], q)  # pruned: exactly zero
                codes[:, column] = q.to(torch.uint8)
                kept = (q - zeros[:, g]) * scales[:, g]
            error = (values - kept) / h1[i, i]
            w1[:, i:] -= error.unsqueeze(1) * h1[i, i:].unsqueeze(0)
            w1[:, i] = kept
            errors[:, i] = error
        w[:, start:end] = w1
        w[:, end:] -= errors @ upper[start:end, end:]
    if codes is None or settings.bits is None:
        return SparseGPTResult(w)
    return SparseGPTResult(w, GroupCodes(codes, scales.to(torch.float16),
                                         zeros.to(torch.uint8), settings.bits, group))
