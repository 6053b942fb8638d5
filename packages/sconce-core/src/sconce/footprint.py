"""What a model really stores: parameter counts, non-zeros and bytes.

The params, non-zero params, sparsity and size metrics all read a model's
:class:`Footprint`. Each module answers for its own tensors through the
``sconce_module_footprint`` hook, so a plugin whose modules pack int4 weights or keep
compressed sparse storage reports their true bytes; modules nobody answers for are counted
by :func:`default_module_footprint`. This module does not consult the plugins itself: callers
pass the ``sconce_module_footprint`` hook in (``ctx.footprint(model)`` and
:func:`sconce.model_footprint` do).

Example:
    >>> import torch
    >>> from torch import nn
    >>> model_footprint(nn.Linear(100, 10)).nbytes
    4040
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class Footprint:
    """Storage of a module or model.

    Attributes:
        params: number of weight values (parameters, or packed weights of converted modules).
        nonzero: how many of those are not zero.
        nbytes: bytes that would ship: weights in their stored dtype, plus scales, indices and
            persistent buffers.

    Example:
        >>> Footprint(10, 5, 40) + Footprint(2, 2, 8)
        Footprint(params=12, nonzero=7, nbytes=48)
    """

    params: int = 0
    nonzero: int = 0
    nbytes: int = 0

    def __add__(self, other: Footprint) -> Footprint:
        return Footprint(
            self.params + other.params, self.nonzero + other.nonzero, self.nbytes + other.nbytes
        )

    @property
    def sparsity(self) -> float:
        """Fraction of weight values that are zero (0.0 for a model without weights)."""
        return 1.0 - self.nonzero / self.params if self.params else 0.0


def tensor_nbytes(tensor: torch.Tensor) -> int:
    """Bytes needed to store ``tensor`` in its own layout and dtype.

    Dense tensors count ``numel * element_size``; sparse layouts count their values and
    index tensors; quantized tensors count their integer values plus scales and zero points.

    Example:
        >>> tensor_nbytes(torch.zeros(3, 4))
        48
        >>> tensor_nbytes(torch.eye(4).to_sparse_csr())  # 4 values, 4 col indices, 5 row ptrs
        88
    """
    layout = tensor.layout
    if layout == torch.sparse_coo:
        tensor = tensor.coalesce()
        return tensor_nbytes(tensor.values()) + tensor_nbytes(tensor.indices())
    if layout in (torch.sparse_csr, torch.sparse_bsr):
        return sum(
            tensor_nbytes(t) for t in (tensor.values(), tensor.crow_indices(), tensor.col_indices())
        )
    if layout in (torch.sparse_csc, torch.sparse_bsc):
        return sum(
            tensor_nbytes(t) for t in (tensor.values(), tensor.ccol_indices(), tensor.row_indices())
        )
    if tensor.is_quantized:
        values = tensor.numel() * tensor.element_size()
        if tensor.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
            return (
                values
                + tensor_nbytes(tensor.q_per_channel_scales())
                + tensor_nbytes(tensor.q_per_channel_zero_points())
            )
        return values + 8 + 8  # one float64 scale, one int64 zero point
    return tensor.numel() * tensor.element_size()


def tensor_nonzero(tensor: torch.Tensor) -> int:
    """Count the non-zero values of a dense, sparse or quantized tensor.

    Example:
        >>> tensor_nonzero(torch.tensor([0.0, 1.0, 2.0]))
        2
    """
    if tensor.layout != torch.strided:
        tensor = tensor.to_dense()
    if tensor.is_quantized:
        tensor = tensor.int_repr() - _zero_points_like(tensor)
    return int(torch.count_nonzero(tensor.detach()))


def _zero_points_like(tensor: torch.Tensor) -> torch.Tensor:
    if tensor.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
        shape = [1] * tensor.dim()
        shape[tensor.q_per_channel_axis()] = -1
        return tensor.q_per_channel_zero_points().reshape(shape)
    return torch.tensor(tensor.q_zero_point())


def default_module_footprint(module: nn.Module, seen: set[int] | None = None) -> Footprint:
    """Footprint of a module's own parameters and persistent buffers (not its children's).

    Parameters count as weights; buffers (BatchNorm statistics, masks, ...) add bytes only.
    Tensors whose ``id`` is in ``seen`` (shared with a module already counted) are skipped,
    and the ids of counted tensors are added to it.

    Example:
        >>> default_module_footprint(nn.BatchNorm1d(4))  # bias starts at 0; stats + a counter
        Footprint(params=8, nonzero=4, nbytes=72)
    """
    seen = set() if seen is None else seen
    params = nonzero = nbytes = 0
    for param in module._parameters.values():
        if param is None or id(param) in seen:
            continue
        seen.add(id(param))
        params += param.numel()
        nonzero += tensor_nonzero(param)
        nbytes += tensor_nbytes(param)
    for name, buffer in module._buffers.items():
        if buffer is None or name in module._non_persistent_buffers_set or id(buffer) in seen:
            continue
        seen.add(id(buffer))
        nbytes += tensor_nbytes(buffer)
    return Footprint(params, nonzero, nbytes)


ModuleFootprint = Callable[[nn.Module], Footprint | None]
"""A plugin answer for one module (the ``sconce_module_footprint`` hook), None to pass."""


def model_footprint(model: nn.Module, module_footprint: ModuleFootprint | None = None
                    ) -> Footprint:
    """Sum the footprints of every module of ``model``, asking ``module_footprint`` first.

    Args:
        model: the model to count.
        module_footprint: answers for the modules it knows (None: every module is counted
            by :func:`default_module_footprint`).

    Example:
        >>> model_footprint(nn.Sequential(nn.Linear(2, 2), nn.ReLU())).params
        6
    """
    total = Footprint()
    seen: set[int] = set()
    for module in model.modules():
        answer = module_footprint(module) if module_footprint is not None else None
        total = total + (answer if answer is not None else default_module_footprint(module, seen))
    return total
