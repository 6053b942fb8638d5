"""Channel groups: the channels that live in exactly the same set of layers.

After coupling, each channel is a root variable. Channels that appear in the same slots (the
same conv filters, BatchNorm, next-layer columns ...) form a group: one "layer width" of the
network (for a residual stream, every layer that reads or writes it). Groups are what the
ratios, ``round_to`` and the ranking act on.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from sconce_prune.channel.graph import build_dependency_graph
    >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3))
    >>> graph = build_dependency_graph(net, torch.randn(1, 3, 8, 8))
    >>> [(g.name, g.size) for g in find_groups(graph)]
    [('0', 8)]
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from sconce_prune.channel.graph import DependencyGraph

logger = logging.getLogger(__name__)


@dataclass
class ChannelGroup:
    """Channels sharing the same layers.

    Attributes:
        name: the module that produces the channels (named in reports and ``ratios``).
        roots: the prunable channels (root variables), ascending.
        size: all channels of the group (frozen ones included).
        slots: indices into ``graph.slots`` of the tensors holding these channels.
        multiplicity: positions per channel in the producing tensor (heads hold ``head_dim``
            positions each), so ``round_to`` acts on real widths.

    Example:
        >>> ChannelGroup("blocks.0.attn", np.arange(4), 4, [0, 1], 16).multiplicity
        16
    """

    name: str
    roots: np.ndarray
    size: int
    slots: list[int]
    multiplicity: int


def slot_roots(graph: DependencyGraph) -> list[np.ndarray]:
    """The root variable of every position of every slot (cached on the graph).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from sconce_prune.channel.graph import build_dependency_graph
        >>> g = build_dependency_graph(nn.Sequential(nn.Linear(2, 3)), torch.randn(1, 2))
        >>> [r.tolist() for r in slot_roots(g)]  # the weight rows and the bias
        [[0, 1, 2], [0, 1, 2]]
    """
    cached = getattr(graph, "_slot_roots", None)
    if cached is None:
        cached = [graph.space.roots(slot.ids) for slot in graph.slots]
        graph._slot_roots = cached  # type: ignore[attr-defined]
    return cached


def find_groups(graph: DependencyGraph) -> list[ChannelGroup]:
    """Group the prunable channels of ``graph`` by the set of slots they appear in."""
    roots_per_slot = slot_roots(graph)
    if not roots_per_slot:
        return []
    uniques = [np.unique(r) for r in roots_per_slot]
    roots = np.concatenate(uniques)
    slots = np.concatenate([np.full(u.size, i, dtype=np.int64) for i, u in enumerate(uniques)])
    keys = np.random.default_rng(0).integers(1, 2**62, size=len(uniques), dtype=np.int64)
    members, inverse = np.unique(roots, return_inverse=True)
    signature = np.zeros(members.size, dtype=np.int64)
    np.bitwise_xor.at(signature, inverse, keys[slots])
    frozen = np.asarray([graph.space.is_frozen(int(r)) for r in members], dtype=bool)
    first_slot = np.full(members.size, len(uniques), dtype=np.int64)
    np.minimum.at(first_slot, inverse, slots)
    groups = []
    for value in np.unique(signature):
        chosen = signature == value
        prunable = members[chosen & ~frozen]
        if prunable.size == 0:
            continue
        representative = int(prunable[0])
        where = sorted(slots[roots == representative].tolist())
        producer = next((i for i in where if graph.slots[i].role == "out"), where[0])
        positions = int((roots_per_slot[producer] == representative).sum())
        groups.append(ChannelGroup(graph.origin[representative], prunable,
                                   int(chosen.sum()), where, max(1, positions)))
    groups.sort(key=lambda g: g.slots[0])
    return groups
