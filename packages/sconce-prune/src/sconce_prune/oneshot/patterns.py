"""Which weights a one-shot pruner removes: exact counts, per block or per row, and N:M.

Example:
    >>> import torch
    >>> scores = torch.tensor([[4.0, 1.0, 3.0, 2.0], [1.0, 2.0, 3.0, 4.0]])
    >>> lowest_per_row(scores, 2)  # True: pruned
    tensor([[False,  True, False,  True],
            [ True,  True, False, False]])
    >>> nm_lowest(scores, n=1, m=2)  # one pruned in every pair of each row
    tensor([[False,  True, False,  True],
            [ True, False,  True, False]])
"""

from __future__ import annotations

import torch

__all__ = ["lowest", "lowest_per_row", "nm_lowest"]


def lowest(scores: torch.Tensor, count: int) -> torch.Tensor:
    """A mask of the ``count`` lowest scores of the whole tensor (True: pruned).

    Example:
        >>> lowest(torch.tensor([[3.0, 1.0], [2.0, 0.5]]), 2)
        tensor([[False,  True],
                [False,  True]])
    """
    mask = torch.zeros(scores.numel(), dtype=torch.bool, device=scores.device)
    count = max(0, min(int(count), scores.numel()))
    if count:
        mask[torch.topk(scores.reshape(-1), count, largest=False, sorted=False).indices] = True
    return mask.reshape(scores.shape)


def lowest_per_row(scores: torch.Tensor, count: int) -> torch.Tensor:
    """A mask of the ``count`` lowest scores of each row (True: pruned)."""
    mask = torch.zeros_like(scores, dtype=torch.bool)
    count = max(0, min(int(count), scores.shape[1]))
    if count:
        mask.scatter_(1, torch.topk(scores, count, dim=1, largest=False).indices, True)
    return mask


def nm_lowest(scores: torch.Tensor, *, n: int, m: int) -> torch.Tensor:
    """A mask pruning the ``m - n`` lowest of every ``m`` consecutive scores of each row, so
    ``n`` of every ``m`` are kept; the column count must be a multiple of ``m``."""
    rows, cols = scores.shape
    groups = scores.reshape(rows, cols // m, m)
    mask = torch.zeros_like(groups, dtype=torch.bool)
    mask.scatter_(2, torch.topk(groups, m - n, dim=2, largest=False).indices, True)
    return mask.reshape(rows, cols)
