"""Check a pruned model against the plan: every traced value must have the predicted shape.

The pruned model is traced again and run on the example inputs; each node's shape is
compared with the shape the dependency graph predicts (the original shape, each channel
axis shrunk to its kept positions). A mismatch or a failing node raises an error naming
the operation and the module, so a wrong prune is never silent.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from sconce_prune.channel.graph import build_dependency_graph
    >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv2d(4, 2, 3))
    >>> x = torch.randn(1, 3, 8, 8)
    >>> graph = build_dependency_graph(net, x)
    >>> _ = verify(net, graph, set(), x)
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from torch import fx, nn

from sconce.errors import TechniqueError
from sconce_prune.channel.ids import TensorInfo
from sconce_prune.channel.ops import axis_size, kept, removal_mask
from sconce_prune.channel.structure import DependencyGraph
from sconce_prune.channel.tracing import (
    ShapeRecorder,
    describe_op,
    node_module,
    node_shape,
    propagate,
    trace,
)

logger = logging.getLogger(__name__)


def predicted_shape(info: Any, graph: DependencyGraph, removed: np.ndarray) -> Any:
    """The shape a value should have after removing ``removed`` (a removal mask).

    Example:
        >>> import torch
        >>> from sconce_prune.channel.graph import build_dependency_graph
        >>> from sconce_prune.channel.ids import ChannelMap
        >>> net = nn.Sequential(nn.Linear(3, 4))
        >>> graph = build_dependency_graph(net, torch.randn(1, 3))
        >>> mask = np.zeros(len(graph.space), dtype=bool)
        >>> predicted_shape(TensorInfo((1, 4), [ChannelMap((1,), np.arange(4))]), graph, mask)
        (1, 4)
    """
    if isinstance(info, TensorInfo):
        shape = list(info.shape)
        for cmap in info.maps:
            alive = kept(graph.space.roots(cmap.ids), removed)
            for position, axis in enumerate(cmap.axes):
                shape[axis] = axis_size(alive, position)
        return tuple(shape)
    if isinstance(info, (list, tuple)):
        return [predicted_shape(i, graph, removed) for i in info]
    return None


class _CheckedProp(ShapeRecorder):
    """Shape propagation that names the node that fails."""

    def run_node(self, n: fx.Node) -> Any:
        try:
            return super().run_node(n)
        except Exception as exc:
            module = node_module(n)
            raise TechniqueError(
                f"the pruned model fails at {describe_op(n)} (graph node {n.name!r}) in "
                f"module {module or '<root>'!r}: {(str(exc).splitlines() or [''])[0]}; that "
                "code depends on channel counts the engine cannot update — add the module "
                "to ignored_layers"
            ) from None


def verify(model: nn.Module, graph: DependencyGraph, removed: set[int],
           example_inputs: Any, *, retrace: bool = True) -> fx.GraphModule:
    """Raise :class:`TechniqueError` unless the pruned ``model`` matches the plan.

    With ``retrace=False`` the graph traced before pruning is run again (it calls the same,
    now pruned, layers); that is exact when pruning changed no code constant and no tensor
    the graph reads directly. Returns the graph (with shapes), for BatchNorm folding.

    Example:
        >>> import torch
        >>> from sconce_prune.channel.graph import build_dependency_graph
        >>> net = nn.Sequential(nn.Linear(3, 4))
        >>> x = torch.randn(1, 3)
        >>> verify(net, build_dependency_graph(net, x), set(), x).graph is not None
        True
    """
    if retrace:
        gm = trace(model, example_inputs, leaves=graph.leaves, is_leaf=graph.is_leaf,
                   interpreter=_CheckedProp)
    else:
        gm = graph.graph_module
        args = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
        was_training = model.training
        model.eval()
        try:
            propagate(gm, args, _CheckedProp)
        finally:
            model.train(was_training)
    mask = removal_mask(graph, removed)
    for node in gm.graph.nodes:
        if node.op in ("output", "placeholder", "get_attr") or node.name not in graph.values:
            continue
        info = graph.values[node.name]
        if isinstance(info, TensorInfo) and info.param is not None:
            continue  # a parameter's own shape follows its slots
        expected = predicted_shape(info, graph, mask)
        actual = node_shape(node)
        if expected is None or actual is None:
            continue
        if _normal(expected) != _normal(actual):
            raise TechniqueError(
                f"after pruning, {describe_op(node)} (graph node {node.name!r}) in module "
                f"{node_module(node) or '<root>'!r} gives shape {actual} instead of "
                f"{expected}; its code uses a channel count the engine cannot update — "
                "store that count in a module attribute or add the module to ignored_layers"
            )
    return gm


def _normal(shape: Any) -> Any:
    if isinstance(shape, tuple):
        return tuple(int(s) for s in shape)
    if isinstance(shape, list):
        return [_normal(s) for s in shape]
    return None

