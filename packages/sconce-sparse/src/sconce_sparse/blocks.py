"""Detect the block structure of a weight's zeros, whatever pruned it.

A matrix is block-sparse with block ``(r, c)`` when its zeros come in whole ``r x c`` tiles:
the ``fill`` of the kept tiles (their non-zeros over their size) is then close to 1. Block
formats (BSR) do work in proportion to the kept tiles, so a block shape is only worth using
when its fill is high; :func:`detect_block` returns the largest tile whose fill reaches
``min_fill``. Nothing here knows which technique pruned the weights.

Example:
    >>> import torch
    >>> tiles = (torch.rand(16, 8) > 0.5).float()
    >>> matrix = torch.kron(tiles, torch.ones(4, 4)) * (torch.rand(64, 32) + 1)
    >>> detect_block(matrix)
    (4, 4)
    >>> detect_block(torch.eye(64)) is None  # unstructured
    True
"""

from __future__ import annotations

import logging

import torch

logger = logging.getLogger(__name__)

__all__ = ["BLOCK_SIDES", "block_fill", "detect_block", "detect_square_block"]

BLOCK_SIDES: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
"""Tile sides tried, in both directions."""


def block_fill(mask: torch.Tensor, block: tuple[int, int]) -> float:
    """Non-zeros over the positions of the tiles that hold any: 1.0 for exact block sparsity.

    Returns 0.0 when ``block`` does not divide the matrix, and 1.0 for an all-zero matrix.

    Example:
        >>> block_fill(torch.eye(4, dtype=torch.bool), (2, 2))
        0.5
    """
    rows, cols = mask.shape
    r, c = block
    if rows % r or cols % c:
        return 0.0
    kept = mask.reshape(rows // r, r, cols // c, c).any(dim=3).any(dim=1)
    tiles = int(kept.sum())
    return int(mask.sum()) / (tiles * r * c) if tiles else 1.0


def _candidates(square: bool) -> list[tuple[int, int]]:
    shapes = [(r, c) for r in BLOCK_SIDES for c in BLOCK_SIDES
              if r * c > 1 and (not square or r == c)]
    return sorted(shapes, key=lambda s: (-s[0] * s[1], -s[1]))


def _largest(matrix: torch.Tensor, min_fill: float, square: bool) -> tuple[int, int] | None:
    mask = matrix.detach().reshape(matrix.shape[0], -1) != 0
    if not bool(mask.any()) or bool(mask.all()):
        return None
    for block in _candidates(square):
        if block_fill(mask, block) >= min_fill:
            return block
    return None


def detect_block(matrix: torch.Tensor, min_fill: float = 0.9) -> tuple[int, int] | None:
    """The largest tile ``(rows, cols)`` whose kept tiles are at least ``min_fill`` full.

    ``matrix`` is a weight or its 2-D view; None when no tile of more than one value fits
    (unstructured zeros, a dense or an all-zero matrix).

    Example:
        >>> detect_block(torch.kron(torch.eye(4), torch.ones(1, 8)))
        (1, 8)
    """
    return _largest(matrix, min_fill, square=False)


def detect_square_block(matrix: torch.Tensor, min_fill: float = 0.9) -> tuple[int, int] | None:
    """Like :func:`detect_block`, among square tiles only (what torch's CPU BSR kernels take).

    Example:
        >>> detect_square_block(torch.kron(torch.eye(4), torch.ones(1, 8))) is None
        True
    """
    return _largest(matrix, min_fill, square=True)
