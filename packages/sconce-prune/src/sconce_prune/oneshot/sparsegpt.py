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
        clip_search: each group's range chosen by the least rounding error of its weights
            (:func:`sconce.lowbit.grid_for`'s search) rather than its min/max.

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
    clip_search: bool = True

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


_ROW_CHUNK = 256
"""Rows whose triangular systems are solved together (bounds the ``rows x s x s`` memory)."""
_SUBSTITUTE = 16
"""Segments up to this many columns (N:M groups) are solved by forward substitution: a few
vector operations beat building and solving ``rows`` tiny triangular systems."""


def segment_errors(values: torch.Tensor, upper: torch.Tensor, mask: torch.Tensor
                   ) -> torch.Tensor:
    """The OBS errors of pruning the ``mask``-ed weights of a segment of columns, all at once.

    Visiting the segment's columns one by one, a pruned weight's error is its current value
    over ``U_jj``, and it changes the later columns by ``-error * U[j, later]``; kept weights
    (no quantization) add no error. Unrolled, each row's errors solve a lower-triangular
    system: ``e_j U_jj + sum_{k<j} e_k U_kj = w_j`` for its pruned ``j`` (``e_j = 0`` for the
    kept ones). Solving these, batched over rows, is exactly the column-by-column loop.

    Args:
        values: ``(rows, s)`` weights at the start of the segment.
        upper: ``(s, s)`` the inverse Hessian's upper Cholesky factor on the segment.
        mask: ``(rows, s)`` True where pruned.

    Example:
        >>> u = torch.tensor([[2.0, 1.0], [0.0, 1.0]])
        >>> segment_errors(torch.tensor([[4.0, 3.0]]), u, torch.tensor([[True, True]]))
        tensor([[2., 1.]])
    """
    errors = torch.empty_like(values)
    if values.shape[1] <= _SUBSTITUTE:  # an N:M group: forward substitution, column by column
        pruned = values * mask
        for j in range(values.shape[1]):
            errors[:, j] = (pruned[:, j] - errors[:, :j] @ upper[:j, j]) / upper[j, j] \
                * mask[:, j]
        return errors
    lower = upper.t().unsqueeze(0)
    for start in range(0, len(values), _ROW_CHUNK):
        chunk = mask[start:start + _ROW_CHUNK]
        system = lower * chunk.unsqueeze(2).to(lower.dtype)  # row j kept only if j is pruned
        system.diagonal(dim1=1, dim2=2).add_((~chunk).to(lower.dtype))  # e_j = 0 if kept
        rhs = (values[start:start + _ROW_CHUNK] * chunk).unsqueeze(2)
        errors[start:start + _ROW_CHUNK] = torch.linalg.solve_triangular(
            system, rhs, upper=False).squeeze(2)
    return errors


def _nm_cut(values: torch.Tensor, diag: torch.Tensor, settings: SparseGPTSettings
            ) -> torch.Tensor:
    """The pruned mask of one N:M group of columns, by OBS saliency."""
    scores = values.square() / diag.square()
    mask = torch.zeros_like(values, dtype=torch.bool)
    cut = torch.topk(scores, settings.m - settings.n, dim=1, largest=False).indices
    return mask.scatter_(1, cut, True)


def sparsegpt_prune(weight: torch.Tensor, hessian: torch.Tensor,
                    settings: SparseGPTSettings) -> SparseGPTResult:
    """Prune (and optionally quantize) a ``(rows, cols)`` weight given its ``(cols, cols)``
    Hessian; N:M needs ``cols`` to be a multiple of ``m``.

    Without quantization the columns of a block whose mask is known (the whole block when
    unstructured, each group of ``m`` for N:M) are solved together by
    :func:`segment_errors`; with ``bits`` every column is rounded in turn.

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
    quantizer = _Quantizer(settings, rows, cols) if settings.bits is not None else None
    block = _block_size(settings, cols)
    target = round(settings.sparsity * rows * cols)
    pruned_so_far = 0
    for start in range(0, cols, block):
        end = min(start + block, cols)
        w1 = w[:, start:end].clone()
        h1 = upper[start:end, start:end]
        diag = torch.diagonal(h1)
        errors = torch.zeros_like(w1)
        mask = torch.zeros_like(w1, dtype=torch.bool)
        if not settings.m:  # this block's share of the exact layer-wide count, by saliency
            count = round(target * end / cols) - pruned_so_far
            mask = lowest(w1.square() / diag.square().unsqueeze(0), count)
            pruned_so_far += count
        if quantizer is not None:
            for i in range(end - start):
                if settings.m and i % settings.m == 0:
                    mask[:, i:i + settings.m] = _nm_cut(w1[:, i:i + settings.m],
                                                        diag[i:i + settings.m], settings)
                kept = quantizer.round(w1, mask, start, i)
                error = (w1[:, i] - kept) / h1[i, i]
                w1[:, i + 1:].addr_(error, h1[i, i + 1:], alpha=-1.0)
                w1[:, i] = kept
                errors[:, i] = error
        else:
            step = settings.m or (end - start)
            for i in range(0, end - start, step):
                j = i + step
                if settings.m:
                    mask[:, i:j] = _nm_cut(w1[:, i:j], diag[i:j], settings)
                errors[:, i:j] = segment_errors(w1[:, i:j], h1[i:j, i:j], mask[:, i:j])
                w1[:, j:] -= errors[:, i:j] @ h1[i:j, j:]
                w1[:, i:j] -= errors[:, i:j] @ torch.triu(h1[i:j, i:j])
            w1.masked_fill_(mask, 0.0)
        w[:, start:end] = w1
        w[:, end:] -= errors @ upper[start:end, end:]
    if quantizer is None:
        return SparseGPTResult(w)
    return SparseGPTResult(w, quantizer.codes())


class _Quantizer:
    """Joint quantization: group grids from the current (masked) weights, column codes."""

    def __init__(self, settings: SparseGPTSettings, rows: int, cols: int) -> None:
        assert settings.bits is not None
        self.bits = settings.bits
        self.symmetric = settings.symmetric
        self.search = settings.clip_search
        self.group = min(settings.group_size, cols)
        groups = -(-cols // self.group)
        self.values = torch.zeros(rows, cols, dtype=torch.uint8)
        self.scales = torch.zeros(rows, groups)
        self.zeros = torch.zeros(rows, groups)

    def round(self, w1: torch.Tensor, mask: torch.Tensor, start: int, i: int) -> torch.Tensor:
        """Column ``i`` of the block (at ``start``) on its group's grid, pruned ones at 0."""
        column = start + i
        g = column // self.group
        if column % self.group == 0:
            span = w1[:, i:i + self.group].masked_fill(mask[:, i:i + self.group], 0.0)
            self.scales[:, g], self.zeros[:, g] = grid_for(span, self.bits,
                                                           symmetric=self.symmetric,
                                                           search=self.search)
        scale, zero = self.scales[:, g], self.zeros[:, g]
        q = quantize_to_grid(w1[:, i:i + 1], scale, zero, self.bits).squeeze(1)
        q = torch.where(mask[:, i], zero, q)  # pruned: the zero point, exactly 0
        self.values[:, column] = q.to(torch.uint8)
        return (q - zero) * scale

    def codes(self) -> GroupCodes:
        return GroupCodes(self.values, self.scales.to(torch.float16),
                          self.zeros.to(torch.uint8), self.bits, self.group)
