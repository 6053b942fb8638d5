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

from sconce.evaluation import EvalResult
from sconce.sensitivity import Allocation, choose_ratios, scan_sensitivity
from sconce_prune.channel.graph import build_dependency_graph
from sconce_prune.channel.pruner import prune_channels

logger = logging.getLogger(__name__)

PROBE_RATIOS = (0.3, 0.5, 0.7, 0.9)
"""Ratios at which each group is pruned alone."""


def channel_ratios(
    model: nn.Module,
    example_inputs: Any,
    evaluate: Callable[[nn.Module], EvalResult],
    *,
    sparsity: float,
    options: Mapping[str, Any] | None = None,
) -> tuple[Allocation, Any]:
    """Per-group ratios (by producing-module name) that remove ``sparsity`` of the channels.

    Args:
        model: the model (never modified; candidates are pruned copies).
        example_inputs: inputs for tracing.
        evaluate: accuracy and loss of a model on a fixed validation subset.
        sparsity: the overall fraction of channels to remove.
        options: further :func:`prune_channels` keyword arguments (importance, round_to...).

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
        candidate = copy.deepcopy(model)
        chosen = {name: float(r) for name, r in ratios.items() if r > 0}
        if chosen:
            prune_channels(candidate, example_inputs, sparsity=0.0, ratios=chosen,
                           verify_result=False, **options)
        return evaluate(candidate)

    sensitivity = scan_sensitivity(list(sizes), score, PROBE_RATIOS)
    allocation = choose_ratios(sensitivity, sizes, score, sparsity=sparsity)
    logger.info("channel ratios (%s): %s", allocation.method, allocation.ratios)
    return allocation, sensitivity
