"""Per-group channel ratios from the package's sensitivity analysis.

Each channel group is pruned alone at a few ratios on a validation subset
(:func:`sconce.sensitivity.scan_sensitivity`); the allocation removes ``sparsity`` of
all channels where the loss grows least, and it is accepted only if, with every group pruned
together, it beats uniform ratios (:func:`sconce.sensitivity.choose_ratios`).

Example:
    >>> channel_ratios(model, example, evaluate, sparsity=0.5)  # doctest: +SKIP
    Allocation(ratios={'features.0.0': 0.3, ...}, method='sensitivity', ...)
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

from sconce.budget import bisect
from sconce.errors import TechniqueError
from sconce.evaluation import EvalResult
from sconce.recipe import Target
from sconce.sensitivity import (
    Allocation,
    Sensitivity,
    allocate,
    choose_ratios,
    scan_sensitivity,
)
from sconce_prune.channel.graph import build_dependency_graph
from sconce_prune.channel.macs import count_macs
from sconce_prune.channel.pruner import prune_channels

logger = logging.getLogger(__name__)

PROBE_RATIOS = (0.3, 0.5, 0.7, 0.9)
"""Ratios at which each group is pruned alone."""

MAC_SEARCH_STEPS = 8
"""Bisection steps on the channel fraction that meets a MAC target."""


def channel_ratios(
    model: nn.Module,
    example_inputs: Any,
    evaluate: Callable[[nn.Module], EvalResult],
    *,
    sparsity: float,
    options: Mapping[str, Any] | None = None,
    target_macs: Target | None = None,
) -> tuple[Allocation, Any]:
    """Per-group ratios (by producing-module name) that remove ``sparsity`` of the channels,
    or, with ``target_macs``, that meet that MACs target.

    Args:
        model: the model (never modified; candidates are pruned copies).
        example_inputs: inputs for tracing.
        evaluate: accuracy and loss of a model on a fixed validation subset.
        sparsity: the overall fraction of channels to remove.
        options: further :func:`prune_channels` keyword arguments (importance, round_to...).
        target_macs: instead of ``sparsity`` (``"4x"`` or an absolute count): the smallest
            overall channel fraction whose sensitivity allocation meets it is searched, and
            that allocation is used (no uniform competitor: uniform ratios at that channel
            fraction would not keep the same MACs).

    Returns:
        The accepted :class:`~sconce.sensitivity.Allocation` and the sensitivity scan.
    """
    options = {k: v for k, v in (options or {}).items() if k != "ratios"}
    graph = build_dependency_graph(
        model, example_inputs, attention=options.get("attention", "heads"),
        on_unknown=options.get("on_unknown", "error"),
        ignored_layers=options.get("ignored_layers", ()))
    sizes: dict[str, int] = {}
    for group in graph.groups():
        sizes[group.name] = sizes.get(group.name, 0) + group.size

    def score(ratios: Mapping[str, float]) -> EvalResult:
        return evaluate(_pruned_copy(model, example_inputs, ratios, options))

    sensitivity = scan_sensitivity(list(sizes), score, PROBE_RATIOS)
    if target_macs is not None:
        allocation = _at_macs(model, example_inputs, sensitivity, sizes, score, target_macs,
                              options)
    else:
        allocation = choose_ratios(sensitivity, sizes, score, sparsity=sparsity)
    logger.info("channel ratios (%s): %s", allocation.method, allocation.ratios)
    return allocation, sensitivity


def _pruned_copy(model: nn.Module, example_inputs: Any, ratios: Mapping[str, float],
                 options: Mapping[str, Any]) -> nn.Module:
    candidate = copy.deepcopy(model)
    chosen = {name: float(r) for name, r in ratios.items() if r > 0}
    if chosen:
        prune_channels(candidate, example_inputs, sparsity=0.0, ratios=chosen, verify=False,
                       **options)
    return candidate


def _at_macs(model: nn.Module, example_inputs: Any, sensitivity: Sensitivity,
             sizes: Mapping[str, int], score: Callable[[Mapping[str, float]], EvalResult],
             target: Target, options: Mapping[str, Any]) -> Allocation:
    """The sensitivity allocation of the smallest channel fraction that meets ``target``
    (bisection on pruned copies)."""
    limit = target.limit(count_macs(model, example_inputs))

    def ratios_at(sparsity: float) -> dict[str, float] | None:
        try:
            return allocate(sensitivity, sizes, sparsity)
        except TechniqueError:  # beyond what the probed ratios reach
            return None

    def probe(sparsity: float) -> tuple[dict[str, float] | None, float]:
        ratios = ratios_at(sparsity)
        if ratios is None:
            return None, float("inf")
        return ratios, float(count_macs(_pruned_copy(model, example_inputs, ratios, options),
                                        example_inputs))

    high = max(PROBE_RATIOS)
    while ratios_at(high) is None and high > 0.01:
        high -= 0.01
    found = bisect(probe, lambda result: result[1] <= limit, 0.0, high, want="smallest",
                   steps=MAC_SEARCH_STEPS, try_high_first=True)
    best = found.result[0] if found.result is not None else None
    if found.value is None or best is None:
        raise TechniqueError(f"no sensitivity allocation meets target_macs={target} (at most "
                             f"{high:.0%} of the channels can go); relax target_macs or use "
                             "allocation='uniform'")
    result = score(best)
    logger.info("channel ratios at %s MACs: %s", target, best)
    return Allocation(dict(best), found.value, "sensitivity", result.accuracy, result.loss,
                      sensitivity.baseline_accuracy)
