"""Which channels to remove: uniform or global ranking, per-module ratios, ``round_to``.

Example:
    >>> keep_count(64, 0.5, step=8)
    32
    >>> keep_count(20, 0.5, step=8), keep_count(8, 0.5, step=8)
    (8, 4)
"""

from __future__ import annotations

import fnmatch
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from sconce_prune.channel.groups import ChannelGroup

logger = logging.getLogger(__name__)


@dataclass
class Selection:
    """The channels chosen for removal and each group's width before and after.

    Example:
        >>> Selection({3, 4}, [("conv", 8, 6)]).widths[0][2]
        6
    """

    removed: set[int]
    widths: list[tuple[str, int, int]]


def rounding_step(round_to: int, multiplicity: int) -> int:
    """Channels per rounding step so that ``channels * multiplicity`` is a multiple of
    ``round_to``.

    Example:
        >>> rounding_step(8, 16), rounding_step(8, 1)
        (1, 8)
    """
    return max(1, round_to // math.gcd(round_to, multiplicity))


def keep_count(size: int, ratio: float, step: int = 1) -> int:
    """How many of ``size`` channels stay when ``ratio`` of them go, rounded to ``step``
    (layers narrower than two steps are not rounded, so they can still be pruned)."""
    keep = size - math.floor(size * ratio + 1e-9)
    if step > 1 and size >= 2 * step:
        keep = max(step, math.floor(keep / step + 0.5) * step)
    return min(size, max(1, keep))


def ratio_for(group: ChannelGroup, sparsity: float, ratios: Mapping[str, float]) -> float:
    """The sparsity of ``group``: the first matching ``ratios`` pattern, else ``sparsity``."""
    for pattern, ratio in ratios.items():
        if fnmatch.fnmatchcase(group.name, pattern):
            return float(ratio)
    return sparsity


def select(
    groups: Sequence[ChannelGroup],
    scores: Sequence[np.ndarray],
    sparsity: float,
    *,
    ratios: Mapping[str, float] | None = None,
    ranking: str = "uniform",
    round_to: int = 1,
    reference: Mapping[int, int] | None = None,
) -> Selection:
    """Choose the channels to remove.

    Args:
        groups: the prunable groups.
        scores: one score array per group (higher = more important).
        sparsity: fraction of each group's channels to remove (``uniform``) or of all
            channels (``global``).
        ratios: per-module overrides (fnmatch on the group's name).
        ranking: ``uniform`` or ``global``.
        round_to: kept widths are multiples of this.
        reference: original widths by group index (iterative pruning measures the ratio
            against them).

    Returns:
        The :class:`Selection`.

    Example:
        >>> group = ChannelGroup("conv", np.array([10, 11, 12, 13]), 4, [0], 1)
        >>> select([group], [np.array([0.3, 0.1, 0.9, 0.2])], 0.5).removed == {11, 13}
        True
    """
    ratios = dict(ratios or {})
    removed: set[int] = set()
    widths: list[tuple[str, int, int]] = []
    targets: dict[int, int] = {}
    pool: list[tuple[float, int, int]] = []
    for index, (group, score) in enumerate(zip(groups, scores, strict=True)):
        step = rounding_step(round_to, group.multiplicity)
        base = (reference or {}).get(index, group.size)
        explicit = any(fnmatch.fnmatchcase(group.name, p) for p in ratios)
        if ranking == "global" and not explicit:
            mean = float(np.mean(score)) or 1.0
            pool += [(float(s) / mean, index, k) for k, s in enumerate(score)]
            continue
        keep = keep_count(base, ratio_for(group, sparsity, ratios), step)
        targets[index] = min(group.size, keep)
    if pool:
        pooled_groups = sorted({i for _, i, _ in pool})
        total = sum((reference or {}).get(i, groups[i].size) for i in pooled_groups)
        budget = math.floor(total * sparsity + 1e-9)
        taken = dict.fromkeys(pooled_groups, 0)
        for _, index, _ in sorted(pool):
            if budget <= 0:
                break
            group = groups[index]
            floor = rounding_step(round_to, group.multiplicity)
            if group.size - taken[index] - 1 >= min(floor, group.size - 1) and \
                    taken[index] < group.roots.size:
                taken[index] += 1
                budget -= 1
        for index in pooled_groups:
            group = groups[index]
            step = rounding_step(round_to, group.multiplicity)
            keep = group.size - taken[index]
            if step > 1 and group.size >= 2 * step:
                keep = max(step, math.floor(keep / step + 0.5) * step)
            targets[index] = min(group.size, max(1, keep))
    for index, group in enumerate(groups):
        keep = targets[index]
        count = min(group.roots.size, max(0, group.size - keep))
        order = np.argsort(scores[index], kind="stable")
        removed.update(int(r) for r in group.roots[order[:count]])
        widths.append((group.name, group.size, group.size - count))
    return Selection(removed, widths)
