"""Wanda (Sun et al., 2023): prune by ``|W_ij| * ||X_j||``, per output row, no weight update.

A weight matters as much as its magnitude times the norm of the input feature it multiplies
(over the calibration rows); within each output row (or each group of ``m`` inputs of a row,
for N:M) the weights with the lowest scores are set to zero. Only the inputs' squared norms
are needed, so calibration accumulates the Hessian's diagonal only.

Example:
    >>> import torch
    >>> weight = torch.tensor([[1.0, 1.0, 4.0, 2.0]])
    >>> norms = torch.tensor([100.0, 1.0, 1.0, 1.0])  # sum of x_j^2: feature 0 is loud
    >>> wanda_prune(weight, norms, sparsity=0.5)
    tensor([[1., 0., 4., 0.]])
"""

from __future__ import annotations

import torch

from sconce_prune.oneshot.patterns import lowest_per_row, nm_lowest

__all__ = ["wanda_prune", "wanda_scores"]


def wanda_scores(weight: torch.Tensor, feature_sq_norms: torch.Tensor) -> torch.Tensor:
    """``|W_ij| * sqrt(sum x_j^2)`` for a ``(rows, cols)`` weight.

    Example:
        >>> wanda_scores(torch.tensor([[-2.0, 1.0]]), torch.tensor([4.0, 9.0]))
        tensor([[4., 3.]])
    """
    return weight.abs() * feature_sq_norms.clamp_min(0.0).sqrt().unsqueeze(0)


def wanda_prune(weight: torch.Tensor, feature_sq_norms: torch.Tensor, *, sparsity: float,
                n: int = 0, m: int = 0) -> torch.Tensor:
    """The weight with the lowest-scoring entries of each row zeroed: ``round(sparsity *
    cols)`` per row, or ``m - n`` of every ``m`` (N:M, when ``m`` is given)."""
    scores = wanda_scores(weight.to(torch.float32), feature_sq_norms.to(torch.float32))
    if m:
        mask = nm_lowest(scores, n=n, m=m)
    else:
        mask = lowest_per_row(scores, round(sparsity * weight.shape[1]))
    return weight.masked_fill(mask, 0.0)
