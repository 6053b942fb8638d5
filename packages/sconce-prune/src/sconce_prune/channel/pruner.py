"""One pruning pass: graph → groups → scores → selection → removal → verification.

Example:
    >>> import torch
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Conv2d(3, 16, 3), nn.BatchNorm2d(16), nn.ReLU(),
    ...                     nn.Conv2d(16, 4, 3))
    >>> report = prune_channels(net, torch.randn(1, 3, 8, 8), sparsity=0.5)
    >>> net[0].out_channels, net[1].num_features, report.widths
    (8, 8, [('0', 16, 8)])
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from sconce.budget import bisect
from sconce.recipe import Target
from sconce_prune.channel.folding import fold_batchnorms
from sconce_prune.channel.graph import DependencyGraph, build_dependency_graph
from sconce_prune.channel.importance import score_groups, taylor_saliency
from sconce_prune.channel.ops import attribute_updates, remove_channels
from sconce_prune.channel.selection import Selection, select
from sconce_prune.channel.verify import verify

logger = logging.getLogger(__name__)

_MAX_ROUNDS = 8
_MAX_RATIO = 0.95  # the largest uniform ratio a target search tries


@dataclass
class PruneReport:
    """What one pruning pass did.

    Example:
        >>> PruneReport([("conv1", 64, 32), ("fc1", 256, 128)]).removed
        160

    Attributes:
        widths: ``(group name, channels before, channels after)`` per prunable group.
        frozen: why channels were kept whatever their score (reason -> count).
        attributes: module attributes updated for code constants (``"blocks.0.attn.heads"``).
        folded: BatchNorms folded into the layer before them (with ``fold_bn``).
    """

    widths: list[tuple[str, int, int]]
    frozen: dict[str, int] = field(default_factory=dict)
    attributes: dict[str, int] = field(default_factory=dict)
    folded: list[str] = field(default_factory=list)

    @property
    def removed(self) -> int:
        """Channels removed in all."""
        return sum(before - after for _, before, after in self.widths)


def prune_channels(
    model: nn.Module,
    example_inputs: Any,
    *,
    sparsity: float = 0.5,
    importance: str = "l2",
    aggregation: str = "sum",
    ranking: str = "uniform",
    round_to: int = 1,
    ratios: Mapping[str, float] | None = None,
    ignored_layers: Sequence[str] = (),
    attention: str = "heads",
    on_unknown: str = "error",
    taylor_batches: Iterable[tuple[Any, torch.Tensor]] | None = None,
    adapter: Any = None,
    seed: int = 0,
    reference: dict[int, int] | None = None,
    verify_result: bool = True,
    fold_bn: bool = False,
    consumers: bool = False,
) -> PruneReport:
    """Remove channels of ``model`` in place.

    Args:
        model: the model to prune (modified in place).
        example_inputs: a tensor or tuple of tensors it accepts (batch 1 is enough).
        sparsity: the fraction of channels removed from every group (or overall, for
            ``ranking="global"``).
        importance: ``l1``, ``l2``, ``bn_scale``, ``taylor`` or ``random``.
        aggregation: ``sum``, ``mean`` or ``max`` over a group's producing tensors.
        ranking: ``uniform`` or ``global``.
        round_to: kept widths are multiples of this.
        ratios: per-module sparsity (fnmatch patterns on producing module names).
        ignored_layers: modules whose output channels stay.
        attention: ``heads`` or ``dims``.
        on_unknown: ``error`` or ``freeze``.
        taylor_batches: ``(inputs, targets)`` batches for ``importance="taylor"``.
        adapter: runs the model for the Taylor criterion (default: a classifier).
        seed: for ``importance="random"``.
        reference: original group widths by group index, filled on the first call of an
            iterative run so later calls measure ``sparsity`` against them.
        verify_result: check every value's shape after pruning (recommended).
        fold_bn: fold BatchNorms into the layers before them afterwards (for deployment;
            the model then trains without them).
        consumers: score channels also by the weights that read them.

    Returns:
        A :class:`PruneReport`.

    Raises:
        TechniqueError: the model cannot be traced, uses an operation the engine does not
            know (with ``on_unknown="error"``), or the pruned model would not match.

    Example:
        >>> net = nn.Sequential(nn.Linear(4, 32), nn.ReLU(), nn.Linear(32, 2))
        >>> prune_channels(net, torch.randn(1, 4), sparsity=0.25).widths
        [('0', 32, 24)]
    """
    graph = build_dependency_graph(model, example_inputs, attention=attention,
                                   on_unknown=on_unknown, ignored_layers=ignored_layers)
    saliency = None
    if importance == "taylor":
        from sconce.adapter import ClassifierAdapter

        if taylor_batches is None:
            from sconce.errors import ConfigError

            raise ConfigError("importance='taylor' needs training batches; give data or "
                              "choose importance='l2'")
        saliency = taylor_saliency(model, taylor_batches, adapter or ClassifierAdapter())

    def choose(graph: DependencyGraph) -> tuple[list[Any], Selection]:
        groups = graph.groups()
        if reference is not None and not reference:
            reference.update({i: g.size for i, g in enumerate(groups)})
        scores = score_groups(model, graph, groups, importance, aggregation, saliency, seed,
                              consumers)
        usable = reference if reference and len(reference) == len(groups) else None
        return groups, select(groups, scores, sparsity, ratios=ratios, ranking=ranking,
                              round_to=round_to, reference=usable)

    _, selection = choose(graph)
    updates: dict[tuple[str, str], int] = {}
    for _ in range(_MAX_ROUNDS):
        updates, blocked = attribute_updates(graph, selection.removed)
        if not blocked:
            break
        for constant in blocked:
            graph.space.freeze(constant.ids, f"{constant.op} in {constant.module or '<root>'!r} "
                                             f"uses the constant {constant.old}")
        _, selection = choose(graph)
    else:  # pragma: no cover - every round freezes more, so this ends long before
        selection = Selection(set(), [])
    remove_channels(model, graph, selection.removed, updates)
    read_directly = {str(n.target) for n in graph.graph_module.graph.nodes if n.op == "get_attr"}
    retrace = bool(updates) or any(f"{s.module}.{s.tensor}".lstrip(".") in read_directly
                                   for s in graph.slots)
    traced = verify(model, graph, selection.removed, example_inputs,
                    retrace=retrace) if verify_result else None
    folded = fold_batchnorms(model, example_inputs, traced) if fold_bn else []
    return PruneReport(selection.widths, _frozen_reasons(graph),
                       {f"{m}.{a}".lstrip("."): v for (m, a), v in updates.items()}, folded)


def _frozen_reasons(graph: DependencyGraph) -> dict[str, int]:
    reasons: dict[str, int] = {}
    for reason in graph.space.frozen_reasons():
        if reason != "reaches a model output":
            reasons[reason] = reasons.get(reason, 0) + 1
    return reasons


def search_ratio(
    model: nn.Module,
    example_inputs: Any,
    target: Target,
    measure: Callable[[nn.Module], float],
    prune: Callable[[nn.Module, float], Any],
    *,
    iterations: int = 10,
) -> float:
    """The smallest uniform ratio whose pruned model meets ``target`` (MACs or latency: a
    reduction like ``"2x"`` against the original, or an absolute value), by bisection
    (:func:`sconce.budget.bisect`) on copies of ``model``; 0.95 when even that ratio misses.

    ``prune(copy, ratio)`` prunes a copy in place; ``measure(model)`` returns the quantity.

    Example:
        >>> import torch
        >>> net = nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 2))
        >>> params = lambda m: float(sum(p.numel() for p in m.parameters()))
        >>> ratio = search_ratio(net, torch.randn(1, 8), Target.parse("2x"), params,
        ...                      lambda m, r: prune_channels(m, torch.randn(1, 8), sparsity=r))
        >>> 0.4 < ratio < 0.6
        True
    """
    limit = target.limit(measure(model))

    def pruned(ratio: float) -> float:
        candidate = copy.deepcopy(model)
        prune(candidate, ratio)
        return measure(candidate)

    found = bisect(pruned, lambda value: value <= limit, 0.0, _MAX_RATIO,
                   want="smallest", steps=iterations)
    return found.value if found.value is not None else _MAX_RATIO
