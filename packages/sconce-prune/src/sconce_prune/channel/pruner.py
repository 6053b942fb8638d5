"""The stateful pruner: graph → groups → scores → selection → removal → verification.

:class:`ChannelPruner` is the Python API (a Torch-Pruning ``MetaPruner`` user will find
``importance``, ``ignored_layers``, ``ratios`` and ``round_to`` here, and ``step()`` for
iterative pruning); :func:`prune_channels` is one call of it, and the ``prune.channel``
technique runs it between fine-tuning steps.

Example:
    >>> import torch
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Conv2d(3, 16, 3), nn.BatchNorm2d(16), nn.ReLU(),
    ...                     nn.Conv2d(16, 4, 3))
    >>> pruner = ChannelPruner(net, torch.randn(1, 3, 8, 8), sparsity=0.5, steps=2)
    >>> [(g.name, g.size) for g in pruner.groups()]
    [('0', 16)]
    >>> pruner.step().widths, pruner.step().widths
    ([('0', 16, 12)], [('0', 12, 8)])
    >>> net[0].out_channels, net[1].num_features
    (8, 8)
"""

from __future__ import annotations

import copy
import difflib
import fnmatch
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from sconce.budget import bisect
from sconce.errors import ConfigError, TechniqueError
from sconce.recipe import Target
from sconce_prune.channel.folding import fold_batchnorms
from sconce_prune.channel.graph import build_dependency_graph
from sconce_prune.channel.groups import ChannelGroup
from sconce_prune.channel.importance import (
    CRITERIA,
    GRADIENT_CRITERIA,
    Criterion,
    gradient_products,
    score_groups,
)
from sconce_prune.channel.ops import Resize, attribute_updates, remove_channels
from sconce_prune.channel.rules import Rule, RuleTable
from sconce_prune.channel.selection import Selection, select
from sconce_prune.channel.structure import DependencyGraph
from sconce_prune.channel.verify import verify

logger = logging.getLogger(__name__)

_MAX_ROUNDS = 8
_AGGREGATIONS = ("sum", "mean", "max")
_RANKINGS = ("uniform", "global")
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


@dataclass
class Plan:
    """Channels chosen for removal (root variables of the current graph), each group's
    width before and after, and the module attributes code constants need updated.

    Example:
        >>> Plan({3, 4}, [("conv", 8, 6)]).widths[0][2]
        6
    """

    removed: set[int]
    widths: list[tuple[str, int, int]]
    updates: dict[tuple[str, str], int] = field(default_factory=dict)


def _group_key(graph: DependencyGraph, group: ChannelGroup) -> tuple[Any, ...]:
    """What identifies a group across re-analyses of the shrinking model."""
    return (group.name, *((graph.slots[i].module, graph.slots[i].tensor, graph.slots[i].dim)
                          for i in group.slots))


class ChannelPruner:
    """Removes channels from a model, in one pass or in ``steps``, with any criterion.

    Args:
        model: the model to prune (modified in place by :meth:`step` / :meth:`prune`).
        example_inputs: a tensor or tuple of tensors it accepts (batch 1 is enough).
        sparsity: the fraction of channels removed from every group (``uniform``) or of
            all channels (``global``), once every step is done.
        steps: how many :meth:`step` calls reach ``sparsity`` (equal increments, measured
            against the original widths).
        importance: a criterion name (see :mod:`.importance`: ``bn_scale``, ``l1``, ``l2``,
            ``group_l2``, ``taylor``, ``group_taylor``, ``hessian``, ``random``) or a function
            of a :class:`~sconce_prune.channel.importance.GroupView` returning one score per
            channel (higher = keep).
        ratios: per-group sparsity, ``{"features.3*": 0.3}`` (fnmatch patterns on the name of
            the module that produces a group's channels).
        ignored_layers: modules (fnmatch patterns) whose output channels are never pruned.
        round_to: kept widths are multiples of this.
        ranking: ``uniform`` or ``global`` (scores normalised per group, ranked together).
        aggregation: ``sum``, ``mean`` or ``max`` over a named criterion's tensors.
        consumers: ``l1`` / ``l2`` / ``taylor`` also score the weights that read a channel.
        attention: ``heads`` (whole heads removed) or ``dims``.
        on_unknown: ``error`` or ``freeze`` for operations no rule describes.
        rules: extra layer rules for this pruner (layer type -> rule, see
            :func:`~sconce_prune.channel.register_rule`).
        batches: ``(inputs, targets)`` batches for the gradient criteria (a list, or a
            function returning an iterable, called at each step on the current model).
        adapter: runs the model for the gradient criteria (default: a classifier).
        seed: for ``importance="random"``.
        verify: check every value's shape after each step (recommended).
        fold_bn: fold BatchNorms into the layers before them after the last step.

    Raises:
        ConfigError: an option is out of range or unknown.

    Example:
        >>> net = nn.Sequential(nn.Linear(4, 32), nn.ReLU(), nn.Linear(32, 2))
        >>> ChannelPruner(net, torch.randn(1, 4), sparsity=0.25, importance="l1").prune().widths
        [('0', 32, 24)]
    """

    def __init__(
        self,
        model: nn.Module,
        example_inputs: Any,
        *,
        sparsity: float = 0.5,
        steps: int = 1,
        importance: str | Criterion = "group_l2",
        ratios: Mapping[str, float] | None = None,
        ignored_layers: Sequence[str] = (),
        round_to: int = 1,
        ranking: str = "uniform",
        aggregation: str = "sum",
        consumers: bool = False,
        attention: str = "heads",
        on_unknown: str = "error",
        rules: Mapping[type[nn.Module], Rule] | RuleTable | None = None,
        batches: Iterable[tuple[Any, torch.Tensor]] | Callable[[], Iterable[Any]] | None = None,
        adapter: Any = None,
        seed: int = 0,
        verify: bool = True,
        fold_bn: bool = False,
    ) -> None:
        _check_options(sparsity, steps, importance, ratios, round_to, ranking, aggregation,
                       ignored_layers)
        self.model = model
        self.example_inputs = example_inputs
        self.sparsity = float(sparsity)
        self.steps = int(steps)
        self.importance = importance
        self.ratios = dict(ratios or {})
        self.ignored_layers = tuple(ignored_layers)
        self.round_to = round_to
        self.ranking = ranking
        self.aggregation = aggregation
        self.consumers = consumers
        self.attention = attention
        self.on_unknown = on_unknown
        self.rules = rules if isinstance(rules, RuleTable) else RuleTable(rules)
        self.batches = batches
        self.adapter = adapter
        self.seed = seed
        self.verify = verify
        self.fold_bn = fold_bn
        self.steps_done = 0
        self._graph: DependencyGraph | None = None
        self._reference: dict[tuple[Any, ...], int] = {}

    # --- inspection ---------------------------------------------------------------------------
    def graph(self) -> DependencyGraph:
        """The dependency graph of the model as it is now (rebuilt after each step)."""
        if self._graph is None:
            self._graph = build_dependency_graph(
                self.model, self.example_inputs, attention=self.attention,
                on_unknown=self.on_unknown, ignored_layers=self.ignored_layers,
                rules=self.rules)
            groups = self._graph.groups()
            if not self._reference:
                _check_names(self.model, groups, self.ratios, self.ignored_layers)
            for group in groups:
                self._reference.setdefault(_group_key(self._graph, group), group.size)
        return self._graph

    def groups(self) -> list[ChannelGroup]:
        """The prunable channel groups of the model as it is now.

        Example:
            >>> net = nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 2))
            >>> [(g.name, g.size) for g in ChannelPruner(net, torch.randn(1, 4)).groups()]
            [('0', 8)]
        """
        return self.graph().groups()

    def scores(self) -> list[np.ndarray]:
        """The importance of every prunable channel of each group (aligned with
        :meth:`groups` and each group's ``roots``)."""
        graph = self.graph()
        return self._scores(graph, graph.groups())

    # --- pruning ------------------------------------------------------------------------------
    def step(self) -> PruneReport:
        """Remove the next ``sparsity / steps`` of the channels (of the original widths).

        Raises:
            TechniqueError: every step is done already.
        """
        if self.steps_done >= self.steps:
            raise TechniqueError(f"this ChannelPruner has done its {self.steps} step(s); make "
                                 "a new one to prune further")
        self.steps_done += 1
        return self._prune_to(self.sparsity * self.steps_done / self.steps)

    def prune(self) -> PruneReport:
        """Remove what the remaining steps would, in one pass (all of ``sparsity``)."""
        if self.steps_done >= self.steps:
            raise TechniqueError(f"this ChannelPruner has done its {self.steps} step(s); make "
                                 "a new one to prune further")
        self.steps_done = self.steps
        return self._prune_to(self.sparsity)

    def _scores(self, graph: DependencyGraph, groups: list[ChannelGroup]) -> list[np.ndarray]:
        products = None
        if (isinstance(self.importance, str) and self.importance in GRADIENT_CRITERIA) \
                or (callable(self.importance) and self.batches is not None):
            products = self._gradient_products()
        return score_groups(self.model, graph, groups, self.importance, self.aggregation,
                            products, self.seed, self.consumers)

    def _gradient_products(self) -> dict[str, list[torch.Tensor]]:
        if self.batches is None:
            raise ConfigError(f"importance={self.importance!r} needs training batches; give "
                              "batches= (or data to the technique), or choose "
                              "importance='group_l2'")
        from sconce.adapter import ClassifierAdapter

        batches = self.batches() if callable(self.batches) else self.batches
        return gradient_products(self.model, batches, self.adapter or ClassifierAdapter())

    def _choose(self, graph: DependencyGraph, sparsity: float, forced: set[int]) -> Selection:
        groups = graph.groups()
        reference = {i: self._reference.get(_group_key(graph, g), g.size)
                     for i, g in enumerate(groups)}
        scores = self._scores(graph, groups)
        if forced:  # channels already chosen (masked) stay chosen
            scores = [np.where(np.isin(g.roots, list(forced)), -np.inf, s)
                      for g, s in zip(groups, scores, strict=True)]
        return select(groups, scores, sparsity, ratios=self.ratios, ranking=self.ranking,
                      round_to=self.round_to, reference=reference)

    def plan(self, sparsity: float, keep: set[int] | frozenset[int] = frozenset()) -> Plan:
        """Choose the channels to remove for ``sparsity`` of the original widths, without
        removing them (``keep``: channels chosen before, chosen again first).

        Example:
            >>> net = nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 2))
            >>> ChannelPruner(net, torch.randn(1, 4)).plan(0.5).widths
            [('0', 8, 4)]
        """
        graph = self.graph()
        forced = set(keep)
        selection = self._choose(graph, sparsity, forced)
        updates: dict[tuple[str, str], int] = {}
        for _ in range(_MAX_ROUNDS):
            updates, blocked = attribute_updates(graph, selection.removed)
            if not blocked:
                break
            for constant in blocked:
                graph.space.freeze(constant.ids, f"{constant.op} in "
                                   f"{constant.module or '<root>'!r} uses the constant "
                                   f"{constant.old}")
            selection = self._choose(graph, sparsity, forced)
        else:  # pragma: no cover - every round freezes more, so this ends long before
            selection = Selection(set(), [])
        return Plan(selection.removed, selection.widths, updates)

    def remove(self, plan: Plan, on_resize: Resize | None = None) -> PruneReport:
        """Remove the channels of ``plan`` (from :meth:`plan` on the model as it is now);
        ``on_resize(old, new, cuts)`` hears of every parameter replaced."""
        graph = self.graph()
        remove_channels(self.model, graph, plan.removed, plan.updates, on_resize)
        self._graph = None
        read_directly = {str(n.target) for n in graph.graph_module.graph.nodes
                         if n.op == "get_attr"}
        retrace = bool(plan.updates) or any(
            f"{s.module}.{s.tensor}".lstrip(".") in read_directly for s in graph.slots)
        traced = verify(self.model, graph, plan.removed, self.example_inputs,
                        retrace=retrace) if self.verify else None
        folded = []
        if self.fold_bn and self.steps_done >= self.steps:
            folded = fold_batchnorms(self.model, self.example_inputs, traced)
        logger.info("channel pruning step %d/%d: %s", self.steps_done, self.steps, plan.widths)
        return PruneReport(plan.widths, _frozen_reasons(graph),
                           {f"{m}.{a}".lstrip("."): v for (m, a), v in plan.updates.items()},
                           folded)

    def _prune_to(self, sparsity: float) -> PruneReport:
        return self.remove(self.plan(sparsity))


def _check_names(model: nn.Module, groups: list[ChannelGroup], ratios: Mapping[str, float],
                 ignored: Sequence[str]) -> None:
    """A ``ratios`` pattern that names no group, or an ``ignored_layers`` pattern that
    names no module, is a mistake: say so with the closest names."""
    group_names = sorted({g.name for g in groups})
    for pattern in ratios:
        if not fnmatch.filter(group_names, pattern):
            raise ConfigError(f"ratios pattern {pattern!r} matches no channel group; "
                              + _closest(pattern, group_names, "group"))
    modules = [name for name, _ in model.named_modules() if name]
    for pattern in ignored:
        if not fnmatch.filter(modules, pattern):
            raise ConfigError(f"ignored_layers entry {pattern!r} matches no module; "
                              + _closest(pattern, modules, "module"))


def _closest(pattern: str, names: list[str], kind: str) -> str:
    close = difflib.get_close_matches(pattern, names, n=3, cutoff=0.5)
    if close:
        return "did you mean " + " or ".join(repr(c) for c in close) + "?"
    return f"{kind} names look like " + ", ".join(repr(n) for n in names[:4])


def _check_options(sparsity: float, steps: int, importance: Any, ratios: Any, round_to: int,
                   ranking: str, aggregation: str, ignored_layers: Any) -> None:
    if not isinstance(sparsity, (int, float)) or not 0.0 <= sparsity < 1.0:
        raise ConfigError(f"sparsity must be in [0, 1), got {sparsity!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ConfigError(f"steps must be an int >= 1, got {steps!r}")
    if not callable(importance) and importance not in CRITERIA:
        raise ConfigError(f"importance must be one of {', '.join(CRITERIA)} or a function of a "
                          f"group, got {importance!r}")
    if isinstance(round_to, bool) or not isinstance(round_to, int) or round_to < 1:
        raise ConfigError(f"round_to must be an int >= 1, got {round_to!r}")
    if ranking not in _RANKINGS:
        raise ConfigError(f"ranking must be 'uniform' or 'global', got {ranking!r}")
    if aggregation not in _AGGREGATIONS:
        raise ConfigError(f"aggregation must be 'sum', 'mean' or 'max', got {aggregation!r}")
    for pattern, ratio in (ratios or {}).items():
        if not isinstance(ratio, (int, float)) or not 0.0 <= ratio < 1.0:
            raise ConfigError(f"ratios[{pattern!r}] must be in [0, 1), got {ratio!r}")
    if isinstance(ignored_layers, str):
        raise ConfigError(f"ignored_layers must be a list of module names or patterns, got "
                          f"the string {ignored_layers!r}; write [{ignored_layers!r}]")


def prune_channels(
    model: nn.Module,
    example_inputs: Any,
    *,
    sparsity: float = 0.5,
    importance: str | Criterion = "l2",
    taylor_batches: Iterable[tuple[Any, torch.Tensor]] | None = None,
    **options: Any,
) -> PruneReport:
    """Remove channels of ``model`` in place, in one pass (a one-step :class:`ChannelPruner`).

    Args:
        model: the model to prune (modified in place).
        example_inputs: a tensor or tuple of tensors it accepts (batch 1 is enough).
        sparsity: the fraction of channels removed from every group (or overall, for
            ``ranking="global"``).
        importance: a criterion name or function (see :class:`ChannelPruner`).
        taylor_batches: ``(inputs, targets)`` batches for the gradient criteria.
        **options: further :class:`ChannelPruner` options (``round_to``, ``ratios``,
            ``ignored_layers``, ``ranking``, ``fold_bn`` ...).

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
    return ChannelPruner(model, example_inputs, sparsity=sparsity, importance=importance,
                         batches=taylor_batches, **options).prune()


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
    Under a reduction, the original is measured again before each candidate and the limit
    follows its smallest value so far: a latency the machine inflated once (a slow spell on a
    shared machine) does not loosen the limit for the whole search.

    Example:
        >>> net = nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 2))
        >>> params = lambda m: float(sum(p.numel() for p in m.parameters()))
        >>> ratio = search_ratio(net, torch.randn(1, 8), Target.parse("2x"), params,
        ...                      lambda m, r: prune_channels(m, torch.randn(1, 8), sparsity=r))
        >>> 0.4 < ratio < 0.6
        True
    """
    original = [measure(model)]

    def pruned(ratio: float) -> float:
        candidate = copy.deepcopy(model)
        prune(candidate, ratio)
        if target.is_ratio:
            original.append(measure(model))
        return measure(candidate)

    found = bisect(pruned, lambda value: value <= target.limit(min(original)), 0.0,
                   _MAX_RATIO, want="smallest", steps=iterations)
    return found.value if found.value is not None else _MAX_RATIO
