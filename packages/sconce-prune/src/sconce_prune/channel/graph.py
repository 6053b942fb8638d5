"""Build the dependency graph: trace the model and walk it with a rule table.

:func:`build_dependency_graph` traces the model (:mod:`.tracing`), keeping layers that a
registered or plugin rule describes opaque, and lets a :class:`~.builder.GraphBuilder` walk
the graph with the rules of a :class:`~.rules.RuleTable`. The result, a
:class:`~.structure.DependencyGraph`, lists every tensor dimension that holds channels and
which channels are coupled.

Example:
    >>> import torch
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Conv2d(8, 4, 3))
    >>> [(g.name, g.size) for g in build_dependency_graph(net, torch.randn(1, 3, 8, 8)).groups()]
    [('0', 8)]
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from torch import nn

from sconce_prune.channel.builder import GraphBuilder, GraphOptions
from sconce_prune.channel.rules import RuleTable, default_rules
from sconce_prune.channel.structure import DependencyGraph
from sconce_prune.channel.tracing import trace

logger = logging.getLogger(__name__)


def build_dependency_graph(
    model: nn.Module,
    example_inputs: Any,
    *,
    attention: str = "heads",
    on_unknown: str = "error",
    ignored_layers: Sequence[str] = (),
    rules: RuleTable | None = None,
) -> DependencyGraph:
    """Trace ``model`` and find its coupled channels.

    Args:
        model: the model (not modified).
        example_inputs: a tensor or tuple of tensors it accepts (batch 1 is enough).
        attention: ``heads`` (heads are removed whole) or ``dims`` (the same dims of
            every head are removed).
        on_unknown: ``error`` or ``freeze`` for operations the engine does not know.
        ignored_layers: fnmatch patterns of modules whose output channels stay.
        rules: the rule table (default: built-in, registered and plugin-described rules).

    Returns:
        The :class:`~sconce_prune.channel.structure.DependencyGraph`.

    Raises:
        TechniqueError: the model cannot be traced, or an unknown operation touches
            prunable channels (with ``on_unknown="error"``); the message names the
            operation and the module.

    Example:
        >>> import torch
        >>> build_dependency_graph(torch.nn.Linear(4, 2), torch.randn(1, 4)).groups()
        []
    """
    table = rules if rules is not None else default_rules()
    gm = trace(model, example_inputs, leaves=ignored_layers, is_leaf=table.is_leaf)
    options = GraphOptions(attention, on_unknown, tuple(ignored_layers))
    return GraphBuilder(model, gm, table, options).run()
