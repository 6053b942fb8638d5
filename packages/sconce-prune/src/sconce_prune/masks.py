"""Pruning masks: magnitude (exact counts, per layer or global), N:M; held during
fine-tuning by the core's :class:`sconce.masks.KeepZeros` (:meth:`MaskSet.keeper`).

Masks are plain boolean tensors held by a :class:`MaskSet`, never registered on the model:
weights are multiplied in place, so the model stays a plain module with no hooks, buffers or
parametrizations, and "folding" the masks in is one last multiplication.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from sconce_prune.targets import find_targets
    >>> model = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 4))
    >>> masks = MaskSet(find_targets(model))
    >>> masks.set_counts({"0": 32, "1": 16})
    >>> masks.zeros(), masks.total()
    (48, 96)
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import torch

from sconce.errors import TechniqueError
from sconce.masks import KeepZeros
from sconce_prune.targets import Target

logger = logging.getLogger(__name__)

__all__ = ["MaskSet", "global_counts", "magnitude_mask", "nm_mask", "round_counts"]


def magnitude_mask(weight: torch.Tensor, pruned: int) -> torch.Tensor:
    """Boolean keep-mask that drops exactly ``pruned`` smallest-magnitude values.

    Example:
        >>> magnitude_mask(torch.tensor([3.0, -1.0, 2.0, 0.5]), 2)
        tensor([ True, False,  True, False])
    """
    numel = weight.numel()
    pruned = max(0, min(int(pruned), numel))
    keep = torch.ones(numel, dtype=torch.bool, device=weight.device)
    if pruned:
        drop = torch.topk(weight.detach().abs().reshape(-1), pruned, largest=False,
                          sorted=False).indices
        keep[drop] = False
    return keep.reshape(weight.shape)


def nm_mask(weight: torch.Tensor, n: int, m: int, input_dim: int = 1) -> torch.Tensor:
    """Keep-mask with the ``n`` largest of every ``m`` consecutive values along ``input_dim``.

    For a convolution, groups run along the input channels at each output channel and
    kernel position (the layout 2:4 sparse kernels use).

    Raises:
        TechniqueError: when the input dimension is not a multiple of ``m``.

    Example:
        >>> nm_mask(torch.tensor([[1.0, -4.0, 3.0, 2.0]]), 2, 4)
        tensor([[False,  True,  True, False]])
    """
    size = weight.shape[input_dim]
    if size % m:
        raise TechniqueError(f"an input dimension of {size} is not a multiple of m={m}")
    moved = weight.detach().abs().movedim(input_dim, -1)
    groups = moved.reshape(-1, m)
    keep = torch.zeros_like(groups, dtype=torch.bool)
    keep.scatter_(1, torch.topk(groups, n, dim=1).indices, True)
    return keep.reshape(moved.shape).movedim(-1, input_dim)


def round_counts(ratios: Mapping[str, float], sizes: Mapping[str, int]) -> dict[str, int]:
    """Per-layer pruned counts for ``ratios`` whose sum is ``round(sum(ratio * size))``.

    Largest-remainder rounding, so a global target is hit exactly, not just per layer.

    Example:
        >>> round_counts({"a": 0.5, "b": 0.5}, {"a": 3, "b": 3})
        {'a': 2, 'b': 1}
    """
    exact = {name: min(max(ratios.get(name, 0.0), 0.0), 1.0) * sizes[name] for name in sizes}
    counts = {name: int(value) for name, value in exact.items()}
    missing = round(sum(exact.values())) - sum(counts.values())
    by_remainder = sorted(sizes, key=lambda name: (counts[name] - exact[name], name))
    for name in by_remainder:
        if missing <= 0:
            break
        if counts[name] < sizes[name]:
            counts[name] += 1
            missing -= 1
    return counts


def global_counts(targets: Sequence[Target], pruned: int) -> dict[str, int]:
    """How many of each target's values fall among the ``pruned`` smallest of all targets.

    Example:
        >>> from torch import nn
        >>> from sconce_prune.targets import find_targets
        >>> model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
        >>> with torch.no_grad():
        ...     _ = model[0].weight.fill_(1.0), model[1].weight.fill_(0.1)
        >>> global_counts(find_targets(model), 20)
        {'0': 4, '1': 16}
    """
    if not targets:
        return {}
    flat = torch.cat([t.weight.detach().abs().reshape(-1).float().cpu() for t in targets])
    pruned = max(0, min(int(pruned), flat.numel()))
    owner = torch.cat([torch.full((t.numel,), i, dtype=torch.long)
                       for i, t in enumerate(targets)])
    counts = torch.zeros(len(targets), dtype=torch.long)
    if pruned:
        drop = torch.topk(flat, pruned, largest=False, sorted=False).indices
        counts = torch.bincount(owner[drop], minlength=len(targets))
    return {t.name: int(c) for t, c in zip(targets, counts, strict=True)}


class MaskSet:
    """Keep-masks for a set of targets, applied to the weights in place.

    Example:
        >>> from torch import nn
        >>> from sconce_prune.targets import find_targets
        >>> layer = nn.Linear(4, 4)
        >>> masks = MaskSet(find_targets(layer))
        >>> masks.set_counts({"": 12})
        >>> masks.sparsity()
        0.75
    """

    def __init__(self, targets: Sequence[Target]) -> None:
        self.targets = list(targets)
        self.masks: dict[str, torch.Tensor] = {}

    @property
    def sizes(self) -> dict[str, int]:
        """Target name -> number of weight values."""
        return {t.name: t.numel for t in self.targets}

    def set_counts(self, counts: Mapping[str, int]) -> None:
        """Recompute magnitude masks that prune exactly ``counts[name]`` values per target
        (targets not named are left unmasked), then apply them."""
        for target in self.targets:
            if target.name in counts:
                self.masks[target.name] = magnitude_mask(target.weight, counts[target.name])
        self.apply()

    def set_masks(self, masks: Mapping[str, torch.Tensor]) -> None:
        """Use the given keep-masks (e.g. N:M), then apply them."""
        for target in self.targets:
            if target.name in masks:
                mask = masks[target.name]
                if mask.shape != target.weight.shape:
                    raise TechniqueError(f"mask for {target.name} has shape {tuple(mask.shape)}, "
                                         f"the weight {tuple(target.weight.shape)}")
                self.masks[target.name] = mask.to(device=target.weight.device, dtype=torch.bool)
        self.apply()

    def apply(self) -> None:
        """Set every masked weight to exactly zero."""
        with torch.no_grad():
            for target in self.targets:
                mask = self.masks.get(target.name)
                if mask is not None:
                    weight = target.weight
                    if mask.device != weight.device:
                        mask = self.masks[target.name] = mask.to(weight.device)
                    weight.masked_fill_(~mask, 0.0)

    def fold(self) -> None:
        """Apply the masks a last time and forget them: the weights carry the zeros."""
        self.apply()
        self.masks.clear()

    def zeros(self) -> int:
        """Weight values of the targets that are exactly zero."""
        with torch.no_grad():
            return sum(int((t.weight == 0).sum()) for t in self.targets)

    def total(self) -> int:
        """Weight values of the targets."""
        return sum(t.numel for t in self.targets)

    def sparsity(self) -> float:
        """Fraction of the targets' weight values that are zero."""
        total = self.total()
        return self.zeros() / total if total else 0.0

    def keeper(self) -> KeepZeros:
        """A training callback that holds these masks (the core's :class:`sconce.masks.KeepZeros`).

        Example:
            >>> MaskSet([]).keeper().masks
            {}
        """
        return KeepZeros({t.name: (t.weight, self.masks[t.name]) for t in self.targets
                          if t.name in self.masks})

    def layer_sparsity(self) -> dict[str, float]:
        """Target name -> fraction of its values that are zero."""
        with torch.no_grad():
            return {t.name: float((t.weight == 0).float().mean()) for t in self.targets}
