"""Channel groups: the channels that live in exactly the same set of layers.

After coupling, each channel is a root variable. Channels that appear in the same slots (the
same conv filters, BatchNorm, next-layer columns ...) form a group: one "layer width" of the
network (for a residual stream, every layer that reads or writes it). Groups are what the
ratios, ``round_to`` and the ranking act on.

This module works on the graph's parts (the variable space, the slots' roots, their roles),
so it sits below :mod:`.structure`, which calls it.

Example:
    >>> from sconce_prune.channel.ids import VariableSpace
    >>> space = VariableSpace()
    >>> ids = space.new(4)
    >>> groups = find_groups(space, [ids, ids], ["out", "in"], ["conv"] * 4)
    >>> [(g.name, g.size, g.slots) for g in groups]
    [('conv', 4, [0, 1])]
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from sconce_prune.channel.ids import VariableSpace

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


def find_groups(space: VariableSpace, roots_per_slot: Sequence[np.ndarray],
                roles: Sequence[str], origin: Sequence[str]) -> list[ChannelGroup]:
    """Group the prunable channels by the set of slots they appear in.

    Args:
        space: the variables (for the frozen flags).
        roots_per_slot: the root variable of every position of every slot.
        roles: each slot's role (``out`` slots name the group and set its multiplicity).
        origin: the module that created each variable.

    Returns:
        The groups with at least one prunable channel, in the order of their first slot.
    """
    if not len(roots_per_slot):
        return []
    lengths = np.fromiter((r.size for r in roots_per_slot), dtype=np.int64,
                          count=len(roots_per_slot))
    every_root = np.concatenate(roots_per_slot).astype(np.int64)
    slot_of = np.repeat(np.arange(lengths.size, dtype=np.int64), lengths)
    stride = int(every_root.max()) + 1 if every_root.size else 1
    pairs = np.sort(slot_of * stride + every_root)  # each (slot, root) once, sorted (numpy
    pairs = pairs[np.r_[True, pairs[1:] != pairs[:-1]]]  # 2.4's hashed unique is slow here)
    slots, roots = pairs // stride, pairs % stride
    keys = np.random.default_rng(0).integers(1, 2**62, size=lengths.size, dtype=np.int64)
    members, inverse = np.unique(roots, return_inverse=True)
    signature = np.zeros(members.size, dtype=np.int64)
    np.bitwise_xor.at(signature, inverse, keys[slots])
    frozen = space.frozen_mask(members)
    by_root = np.argsort(inverse, kind="stable")  # pairs grouped by member, slots ascending
    starts = np.searchsorted(inverse[by_root], np.arange(members.size))
    ends = np.append(starts[1:], by_root.size)
    order = np.argsort(signature, kind="stable")
    bounds = np.flatnonzero(np.r_[True, np.diff(signature[order]) != 0])
    groups = []
    for start, end in zip(bounds.tolist(), [*bounds[1:].tolist(), order.size], strict=True):
        chosen = np.sort(order[start:end])
        prunable = members[chosen][~frozen[chosen]]
        if prunable.size == 0:
            continue
        first = int(chosen[~frozen[chosen]][0])
        where = slots[by_root[starts[first]:ends[first]]].tolist()
        representative = int(members[first])
        producer = next((i for i in where if roles[i] == "out"), where[0])
        positions = int((roots_per_slot[producer] == representative).sum())
        groups.append(ChannelGroup(origin[representative], prunable, int(chosen.size), where,
                                   max(1, positions)))
    groups.sort(key=lambda g: g.slots[0])
    return groups
