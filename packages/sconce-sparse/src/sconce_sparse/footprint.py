"""True storage of the sparse layers, for the core's params / non-zero / size metrics.

A sparse layer's weight lives in its ``weight_*`` buffers (the compressed encoding), which the
core's default would count as bytes but not as parameters. :func:`sparse_footprint` answers
for these layers (the ``sconce_module_footprint`` hook): the weight's values count as
parameters, its stored non-zeros as non-zero, and the bytes are exactly those that
``state_dict()`` holds (encoding, scales, bias, output quantization parameters).

Example:
    >>> import torch
    >>> from sconce_sparse.layers import SparseLinear
    >>> layer = SparseLinear(64, 8, bias=False)
    >>> layer.set_weight(torch.eye(8, 64), "relative")
    >>> sparse_footprint(layer)  # 8 one-byte gaps + 8 float values + 8 int32 row counts
    Footprint(params=512, nonzero=8, nbytes=72)
"""

from __future__ import annotations

import logging

from torch import nn

from sconce.footprint import Footprint, tensor_nbytes, tensor_nonzero
from sconce_sparse.layers import SparseLayer
from sconce_sparse.quantized import SparseQuantized

logger = logging.getLogger(__name__)

__all__ = ["sparse_footprint"]


def sparse_footprint(module: nn.Module) -> Footprint | None:
    """The footprint of a sparse layer, or None for every other module.

    Example:
        >>> sparse_footprint(nn.Linear(2, 2)) is None
        True
    """
    if not isinstance(module, (SparseLayer, SparseQuantized)):
        return None
    rows, cols = module.matrix_shape
    params, nonzero = rows * cols, module.nnz
    nbytes = sum(tensor_nbytes(t) for t in module.buffers(recurse=False))
    bias = module.bias
    if bias is not None:
        params += bias.numel()
        nonzero += tensor_nonzero(bias)
    return Footprint(params, nonzero, nbytes)
