"""OBC / ExactOBS (Frantar & Alistarh, 2022): exact greedy Optimal Brain Surgeon per row.

For the layer-wise error ``||W X - W' X||^2`` every row of ``W`` is an independent problem
with the same Hessian ``H``. ExactOBS prunes one weight at a time: the weight ``j`` whose
removal costs least, ``w_j^2 / (2 [H^-1]_jj)``, is zeroed, the row's other weights get the
optimal correction ``-w_j / [H^-1]_jj * H^-1[:, j]``, and the inverse Hessian of the remaining
weights is updated by one Gaussian elimination step. Each row costs ``O(cols^3)``, so this is
the accurate reference for small layers; :mod:`sparsegpt <sconce_prune.oneshot.sparsegpt>`
approximates it at scale.

Unstructured: every row's whole pruning path is computed first, then the layer's exact count
is shared among rows by the smallest loss increments (made non-decreasing along each path),
and each row is pruned again to its share. N:M: a weight is a candidate only while its group
still holds more than ``n`` weights.

Example:
    >>> import torch
    >>> torch.manual_seed(0) and None
    >>> x = torch.randn(256, 8) @ torch.randn(8, 8)
    >>> w = torch.randn(4, 8)
    >>> h = 2 * x.t() @ x / len(x)
    >>> pruned = obc_prune(w, h, sparsity=0.5)
    >>> int((pruned == 0).sum())
    16
"""

from __future__ import annotations

import logging

import torch

from sconce.layerwise import damped_inverse
from sconce_prune.oneshot.patterns import lowest

logger = logging.getLogger(__name__)

__all__ = ["obc_prune", "obc_row_batch"]

_BATCH_BYTES = 64 * 2**20
"""Memory for the per-row inverse Hessians solved at once."""


def obc_row_batch(weight: torch.Tensor, inverse: torch.Tensor, counts: torch.Tensor, *,
                  n: int = 0, m: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Prune ``counts[r]`` weights from each row of ``weight`` by ExactOBS.

    Args:
        weight: ``(rows, cols)``, float32.
        inverse: the damped ``H^-1``, ``(cols, cols)``.
        counts: ``(rows,)`` weights to prune per row.
        n, m: with ``m``, only weights whose group of ``m`` keeps more than ``n`` are
            candidates.

    Returns:
        The pruned rows, and the loss increment of each step ``(rows, max(counts))``
        (``inf`` past a row's count).

    Example:
        >>> w, losses = obc_row_batch(torch.tensor([[1.0, 0.1]]), torch.eye(2),
        ...                           torch.tensor([1]))
        >>> w, losses
        (tensor([[1., 0.]]), tensor([[0.0050]]))
    """
    w = weight.clone()
    rows, cols = w.shape
    hinv = inverse.unsqueeze(0).repeat(rows, 1, 1)
    removed = torch.zeros(rows, cols, dtype=torch.bool)
    steps = int(counts.max()) if rows else 0
    losses = torch.full((rows, steps), float("inf"))
    index = torch.arange(rows)
    for step in range(steps):
        active = counts > step
        diag = torch.diagonal(hinv, dim1=1, dim2=2)
        scores = w.square() / diag
        blocked = removed.clone()
        if m:
            full = removed.reshape(rows, cols // m, m).sum(-1) >= m - n
            blocked |= full.repeat_interleave(m, dim=1)
        scores = scores.masked_fill(blocked, float("inf"))
        j = scores.argmin(dim=1)
        pivot = diag[index, j]
        column = hinv[index, :, j]  # (rows, cols)
        losses[:, step] = torch.where(active, scores[index, j] / 2, float("inf"))
        scale = (w[index, j] / pivot).masked_fill(~active, 0.0)
        w -= scale.unsqueeze(1) * column
        update = (column / pivot.unsqueeze(1)).masked_fill(~active.unsqueeze(1), 0.0)
        hinv -= update.unsqueeze(2) * column.unsqueeze(1)
        removed[index[active], j[active]] = True
        w[removed] = 0.0
    return w, losses


def obc_prune(weight: torch.Tensor, hessian: torch.Tensor, *, sparsity: float, n: int = 0,
              m: int = 0, damp: float = 0.01) -> torch.Tensor:
    """Prune a ``(rows, cols)`` weight by ExactOBS: ``sparsity`` of it over the layer, or
    ``m - n`` of every ``m`` consecutive inputs of each row (N:M, when ``m`` is given).

    Example:
        >>> x = torch.randn(64, 8)
        >>> pruned = obc_prune(torch.randn(3, 8), 2 * x.t() @ x / 64, sparsity=0.0, n=2, m=4)
        >>> (pruned.reshape(3, 2, 4) != 0).sum(-1).tolist()
        [[2, 2], [2, 2], [2, 2]]
    """
    w = weight.detach().to(torch.float32).clone()
    rows, cols = w.shape
    dead = torch.diagonal(hessian) == 0
    w[:, dead] = 0.0
    inverse = damped_inverse(hessian, damp)
    batch = max(1, _BATCH_BYTES // (4 * cols * cols))
    if m:
        counts = torch.full((rows,), cols // m * (m - n), dtype=torch.long)
    else:
        total = round(sparsity * rows * cols)
        if total == 0:
            return w
        paths = torch.cat([obc_row_batch(w[r:r + batch], inverse,
                                         torch.full((len(w[r:r + batch]),), cols))[1]
                           for r in range(0, rows, batch)])
        # a row's path must be taken in order: make its increments non-decreasing, then
        # share the count out by the smallest increments over the layer
        increments = torch.cummax(paths, dim=1).values
        counts = lowest(increments, total).sum(dim=1)
    out = torch.empty_like(w)
    for r in range(0, rows, batch):
        out[r:r + batch] = obc_row_batch(w[r:r + batch], inverse, counts[r:r + batch],
                                         n=n, m=m)[0]
    return out
