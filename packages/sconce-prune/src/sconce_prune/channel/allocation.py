"""Per-group channel ratios from the package's sensitivity analysis.

Each channel group is pruned alone at a few ratios on a validation subset
(:func:`sconce_prune.sensitivity.scan_sensitivity`); the allocation removes ``sparsity`` of
all channels where the loss grows least, and it is accepted only if, with every group pruned
together, it beats uniform ratios (:func:`sconce_prune.sensitivity.choose_ratios`).

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

from sconce.errors import TechniqueError
from sconce.evaluation import EvalResult
from sconce_prune.channel.graph import build_dependency_graph
from sconce_prune.channel.macs import count_macs
from sconce_prune.channel.pruner import prune_channels
from sconce_prune.sensitivity import (
    Allocation,
    Sensitivity,
    allocate,
    choose_ratios,
    scan_sensitivity,
)

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
    target_macs: float | None = None,
) -> tuple[Allocation, Any]:
    """Per-group ratios (by producing-module name) that remove ``sparsity`` of the channels,
    or, with ``target_macs``, that keep that fraction of the model's MACs.

    Args:
        model: the model (never modified; candidates are pruned copies).
        example_inputs: inputs for tracing.
        evaluate: accuracy and loss of a model on a fixed validation subset.
        sparsity: the overall fraction of channels to remove.
        options: further :func:`prune_channels` keyword arguments (importance, round_to...).
        target_macs: instead of ``sparsity``: the overall channel fraction whose
            sensitivity allocation keeps at most this fraction of the MACs is searched, and
            that allocation is used (no uniform competitor: uniform ratios at that channel
            fraction would not keep the same MACs).

    Returns:
        The accepted :class:`~sconce_prune.sensitivity.Allocation` and the sensitivity scan.
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
             target: float, options: Mapping[str, Any]) -> Allocation:
    """The sensitivity allocation of the smallest channel fraction that keeps at most
    ``target`` of the MACs (bisection on pruned copies)."""
    base = count_macs(model, example_inputs)

    def fraction(ratios: Mapping[str, float]) -> float:
        return count_macs(_pruned_copy(model, example_inputs, ratios, options),
                          example_inputs) / base

    def ratios_at(sparsity: float) -> dict[str, float] | None:
        try:
            return allocate(sensitivity, sizes, sparsity)
        except TechniqueError:  # beyond what the probed ratios reach
            return None

    low, high = 0.0, max(PROBE_RATIOS)
    best = ratios_at(high)
    while best is None:
        high -= 0.01
        best = ratios_at(high)
    if fraction(best) > target:
        raise TechniqueError(f"no sensitivity allocation keeps only {target:.0%} of the MACs "
                             f"(at most {high:.0%} of the channels can go); raise target_macs "
                             "or use allocation='uniform'")
    for _ in range(MAC_SEARCH_STEPS):
        middle = (low + high) / 2
        ratios = ratios_at(middle)
        if ratios is not None and fraction(ratios) <= target:
            high, best = middle, ratios
        else:
            low = middle
    result = score(best)
    logger.info("channel ratios at %.1f%% of the MACs: %s", 100 * target, best)
    return Allocation(dict(best), high, "sensitivity", result.accuracy, result.loss,
                      sensitivity.baseline_accuracy)
