"""Physical removal: shrink parameters, buffers and the attributes that describe them.

Every slot of the dependency graph becomes an ``index_select`` of its tensor along its dim;
then the attributes that count channels (``in_channels``, ``groups``, ``num_features``,
``normalized_shape``, ``embed_dim``, ``num_heads``, ``head_dim`` ...) are set from the kept
positions, and code constants that size channels are updated through the attribute they
came from. The model stays a plain module of ordinary layers.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from sconce_prune.channel.graph import build_dependency_graph
    >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv2d(4, 2, 3))
    >>> graph = build_dependency_graph(net, torch.randn(1, 3, 8, 8))
    >>> remove_channels(net, graph, {int(graph.groups()[0].roots[0])})
    >>> net[0].out_channels, net[1].weight.shape[1]
    (3, 3)
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from sconce.errors import TechniqueError
from sconce_prune.channel.structure import DependencyGraph, ShapeConstant

logger = logging.getLogger(__name__)


def removal_mask(graph: DependencyGraph, removed: set[int]) -> np.ndarray:
    """``mask[v]`` is True when variable ``v`` is a removed root."""
    mask = np.zeros(len(graph.space), dtype=bool)
    if removed:
        mask[np.fromiter(removed, dtype=np.int64, count=len(removed))] = True
    return mask


def kept(roots: np.ndarray, removed: np.ndarray) -> np.ndarray:
    """Boolean array: the positions whose root variable is not removed (``removed`` is a
    :func:`removal_mask`)."""
    return ~removed[roots]


def axis_size(alive: np.ndarray, axis: int) -> int:
    """The size along ``axis`` of a pruned id tensor: the most kept positions of any line
    along it (lines through removed heads keep none; slices of a fused projection may keep
    different positions but the same count)."""
    if alive.ndim == 1:
        return int(alive.sum())
    return int(alive.sum(axis=axis).max())


def new_size(constant: ShapeConstant, graph: DependencyGraph, removed: np.ndarray) -> int:
    """The size along a constant's axis after removing ``removed`` (a removal mask)."""
    return axis_size(kept(graph.space.roots(constant.ids), removed), constant.axis)


def attribute_updates(graph: DependencyGraph, removed: set[int]
                      ) -> tuple[dict[tuple[str, str], int], list[ShapeConstant]]:
    """The attribute changes the code constants need, and the constants that cannot change
    (no attribute, or two different new values for one attribute)."""
    updates: dict[tuple[str, str], int] = {}
    blocked: list[ShapeConstant] = []
    claims: dict[tuple[str, str], list[ShapeConstant]] = defaultdict(list)
    mask = removal_mask(graph, removed)
    for constant in graph.constants:
        size = new_size(constant, graph, mask)
        if size == constant.old:
            continue
        if constant.attr is None:
            blocked.append(constant)
            continue
        key = (constant.module, constant.attr)
        claims[key].append(constant)
        if updates.setdefault(key, size) != size:
            blocked.extend(claims[key])
    return updates, blocked


Resize = Callable[[torch.Tensor, torch.Tensor, list[tuple[int, np.ndarray]]], None]
"""``on_resize(old, new, cuts)``: a parameter was replaced by ``new``, which keeps the
positions ``keep`` of ``old`` along each ``(dim, keep)`` of ``cuts``, in that order."""


def remove_channels(model: nn.Module, graph: DependencyGraph, removed: set[int],
                    updates: dict[tuple[str, str], int] | None = None,
                    on_resize: Resize | None = None) -> None:
    """Remove the channels ``removed`` (root variables) from ``model`` in place.

    Args:
        model: the model the graph was built from.
        graph: its dependency graph.
        removed: root variables to remove.
        updates: attribute changes for code constants (from :func:`attribute_updates`).
        on_resize: called for every parameter replaced (an optimizer follows it this way).
    """
    roots_per_slot = graph.slot_roots()
    gone = removal_mask(graph, removed)
    modules = dict(model.named_modules())
    selections: dict[tuple[str, str], list[tuple[int, np.ndarray]]] = defaultdict(list)
    for slot, roots in zip(graph.slots, roots_per_slot, strict=True):
        mask = kept(roots, gone)
        if not mask.all():
            selections[(slot.module, slot.tensor)].append((slot.dim, np.nonzero(mask)[0]))
    replaced: dict[tuple[int, bytes], torch.Tensor] = {}  # a tensor two modules share
    for (module_name, tensor_name), cuts in selections.items():
        _shrink(modules[module_name], tensor_name, cuts, on_resize, replaced)
    for count in graph.counts:
        alive = int(kept(graph.space.roots(count.ids), gone).sum())
        module = modules[count.module]
        if count.index is None:
            setattr(module, count.attr, alive)
        else:
            entries = list(getattr(module, count.attr))
            entries[count.index] = alive
            setattr(module, count.attr, tuple(entries))
    for layout in graph.heads:
        _set_heads(modules[layout.module], graph, layout.ids, gone)
    for (module_name, attr), value in (updates or {}).items():
        setattr(modules[module_name], attr, value)


def _shrink(module: nn.Module, name: str, cuts: list[tuple[int, np.ndarray]],
            on_resize: Resize | None, replaced: dict[tuple[int, bytes], torch.Tensor]) -> None:
    """Replace ``module.name`` by its kept positions; a tensor another module holds too (a
    recurrent neuron's ``V``) is cut once and the same new tensor given to both."""
    tensor = getattr(module, name)
    if not isinstance(tensor, torch.Tensor):
        raise TechniqueError(f"{type(module).__name__}.{name} is not a tensor; prune.channel "
                             "cannot resize it")
    key = (id(tensor), b"".join(bytes([d % 256]) + k.tobytes() for d, k in cuts))
    replacement = replaced.get(key)
    if replacement is None:
        data = shrunk(tensor.detach(), cuts)
        if isinstance(tensor, nn.Parameter):
            replacement = nn.Parameter(data, requires_grad=tensor.requires_grad)
            if on_resize is not None:
                on_resize(tensor, replacement, cuts)
        else:
            replacement = data
        replaced[key] = replacement
    if name in module._parameters:
        module._parameters[name] = cast(nn.Parameter, replacement)
    elif name in module._buffers:
        module._buffers[name] = replacement.detach()
    else:  # a plain tensor attribute
        setattr(module, name, replacement)


def shrunk(tensor: torch.Tensor, cuts: list[tuple[int, np.ndarray]]) -> torch.Tensor:
    """``tensor`` keeping the positions ``keep`` along each ``(dim, keep)`` of ``cuts``.

    Example:
        >>> shrunk(torch.arange(6).view(2, 3), [(1, np.array([0, 2]))]).tolist()
        [[0, 2], [3, 5]]
    """
    for dim, keep in cuts:
        tensor = tensor.index_select(dim, torch.as_tensor(keep, device=tensor.device))
    return tensor


def _set_heads(module: nn.Module, graph: DependencyGraph, layout: np.ndarray,
               removed: np.ndarray) -> None:
    alive = kept(graph.space.roots(layout), removed)
    per_head = alive.sum(axis=1)
    heads = per_head[per_head > 0]
    if heads.size == 0 or len(set(heads.tolist())) != 1:
        raise TechniqueError(f"pruning would leave unequal heads in {type(module).__name__} "
                             f"(kept dims per head: {per_head.tolist()}); this is a bug")
    attention: Any = module
    attention.num_heads = int(heads.size)
    attention.head_dim = int(heads[0])
