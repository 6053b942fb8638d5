"""How important each channel is: L1, L2, BatchNorm scale, first-order Taylor, random.

A channel's score in one tensor is the norm (or Taylor saliency) of its slice; a tensor
that holds a channel at several positions (a flatten into a Linear) averages them. Scores
come from the tensors that *produce* the channel (filters, biases, norm affines); the
group's tensors are combined by ``aggregation`` (sum, mean or max).

Example:
    >>> import torch
    >>> from torch import nn
    >>> from sconce_prune.channel.graph import build_dependency_graph
    >>> net = nn.Sequential(nn.Conv2d(1, 2, 1, bias=False), nn.Conv2d(2, 1, 1))
    >>> with torch.no_grad(): net[0].weight[:] = torch.tensor([[[[3.0]]], [[[-1.0]]]])
    >>> graph = build_dependency_graph(net, torch.randn(1, 1, 4, 4))
    >>> score_groups(net, graph, graph.groups(), "l1")[0].tolist()
    [3.0, 1.0]
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from torch import nn

from sconce_prune.channel.graph import DependencyGraph
from sconce_prune.channel.groups import ChannelGroup, slot_roots

logger = logging.getLogger(__name__)

_NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def taylor_saliency(model: nn.Module, batches: Iterable[tuple[Any, torch.Tensor]],
                    adapter: Any) -> dict[str, torch.Tensor]:
    """``sum over batches of |w * dL/dw|`` for every parameter (first-order Taylor).

    Args:
        model: the model (its gradients are cleared afterwards; eval-mode statistics).
        batches: ``(inputs, targets)`` pairs.
        adapter: runs the model and computes the loss (a :class:`sconce.ModelAdapter`).

    Returns:
        Parameter name -> saliency tensor of the parameter's shape.

    Example:
        >>> from sconce import ClassifierAdapter
        >>> lin = nn.Linear(2, 2)
        >>> s = taylor_saliency(lin, [(torch.randn(4, 2), torch.tensor([0, 1, 0, 1]))],
        ...                     ClassifierAdapter())
        >>> sorted(s)
        ['bias', 'weight']
    """
    was_training = model.training
    model.eval()
    saliency: dict[str, torch.Tensor] = {}
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    try:
        for inputs, targets in batches:
            for p in params.values():
                p.grad = None
            loss = adapter.loss(adapter.forward(model, inputs), targets)
            loss.backward()
            with torch.no_grad():
                for name, p in params.items():
                    if p.grad is not None:
                        term = (p * p.grad).abs()
                        saliency[name] = saliency[name] + term if name in saliency else term
    finally:
        for p in params.values():
            p.grad = None
        model.train(was_training)
    if not saliency:
        from sconce.errors import DataError

        raise DataError("the taylor criterion got no training batch; give training data or "
                        "use importance='l2'")
    return saliency


def _slice_scores(tensor: torch.Tensor, dim: int, criterion: str) -> np.ndarray:
    t = tensor.detach()
    other = [d for d in range(t.dim()) if d != dim]
    order = 1 if criterion in ("l1", "taylor") else 2
    if not other:
        return t.abs().float().cpu().numpy()
    return torch.linalg.vector_norm(t, ord=order, dim=other).float().cpu().numpy()


def score_groups(
    model: nn.Module,
    graph: DependencyGraph,
    groups: list[ChannelGroup],
    criterion: str = "l2",
    aggregation: str = "sum",
    saliency: dict[str, torch.Tensor] | None = None,
    seed: int = 0,
    consumers: bool = False,
) -> list[np.ndarray]:
    """One score per prunable channel of each group (aligned with ``group.roots``).

    Args:
        model: the model the graph was built from.
        graph: its dependency graph.
        groups: the groups to score.
        criterion: ``l1``, ``l2``, ``bn_scale``, ``taylor`` (needs ``saliency``) or
            ``random``.
        aggregation: ``sum``, ``mean`` or ``max`` over the group's producing tensors.
        saliency: from :func:`taylor_saliency`, for ``taylor``.
        seed: for ``random``.
        consumers: also score a channel by the weights that read it (the next layer's
            input columns), each tensor's scores normalised by their mean.

    Returns:
        A list of float arrays; higher means more important.

    Example:
        >>> from sconce_prune.channel.graph import build_dependency_graph
        >>> net = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1))
        >>> with torch.no_grad(): net[0].weight[:] = torch.tensor([[1., 0], [0, 0], [3, 4]])
        >>> graph = build_dependency_graph(net, torch.randn(1, 2))
        >>> [round(float(s), 2) for s in score_groups(net, graph, graph.groups(), "l2",
        ...                                            aggregation="max")[0]][::2]
        [1.0, 5.0]
    """
    rng = np.random.default_rng(seed)
    roots_per_slot = slot_roots(graph)
    params = dict(model.named_parameters())
    cache: dict[tuple[int, str], np.ndarray] = {}
    results = []
    for group in groups:
        if criterion == "random":
            results.append(rng.random(group.roots.size))
            continue
        chosen = _scoring_slots(model, graph, group, criterion, params, consumers)
        method = "l2" if criterion == "bn_scale" and not _has_norm(model, graph, chosen) \
            else criterion
        per_slot = []
        for index in chosen:
            key = (index, method)
            if key not in cache:
                cache[key] = _slot_scores(model, graph, index, method, saliency)
            scores = _per_root(cache[key], roots_per_slot[index], group.roots)
            if consumers:
                scores = scores / (float(scores.mean()) or 1.0)
            per_slot.append(scores)
        if not per_slot:
            results.append(np.zeros(group.roots.size))
            continue
        stacked = np.stack(per_slot)
        reduce = {"sum": np.sum, "mean": np.mean, "max": np.max}[aggregation]
        results.append(reduce(stacked, axis=0))
    return results


def _scoring_slots(model: nn.Module, graph: DependencyGraph, group: ChannelGroup,
                   criterion: str, params: dict[str, nn.Parameter], consumers: bool
                   ) -> list[int]:
    def is_param(index: int) -> bool:
        slot = graph.slots[index]
        return f"{slot.module}.{slot.tensor}".lstrip(".") in params

    roles = ("out", "in") if consumers and criterion != "bn_scale" else ("out",)
    chosen = [i for i in group.slots if graph.slots[i].role in roles and is_param(i)]
    if criterion == "bn_scale":
        norms = [i for i in chosen if graph.slots[i].tensor == "weight"
                 and isinstance(model.get_submodule(graph.slots[i].module), _NORMS)]
        if norms:
            return norms
    return chosen or [i for i in group.slots if is_param(i)]


def _has_norm(model: nn.Module, graph: DependencyGraph, chosen: list[int]) -> bool:
    return any(isinstance(model.get_submodule(graph.slots[i].module), _NORMS) for i in chosen)


def _slot_scores(model: nn.Module, graph: DependencyGraph, index: int, criterion: str,
                 saliency: dict[str, torch.Tensor] | None) -> np.ndarray:
    slot = graph.slots[index]
    tensor = getattr(model.get_submodule(slot.module), slot.tensor)
    if criterion == "taylor":
        if saliency is None:
            raise ValueError("the taylor criterion needs gradient saliency")
        tensor = saliency[f"{slot.module}.{slot.tensor}".lstrip(".")]
    if criterion == "bn_scale":
        return tensor.detach().abs().float().cpu().numpy().reshape(-1)
    return _slice_scores(tensor, slot.dim, criterion)


def _per_root(scores: np.ndarray, roots: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """Mean score of each wanted root over the positions holding it (0 when absent)."""
    index = np.searchsorted(wanted, roots)
    index = np.clip(index, 0, wanted.size - 1)
    present = wanted[index] == roots
    sums = np.bincount(index[present], weights=scores[present], minlength=wanted.size)
    counts = np.bincount(index[present], minlength=wanted.size)
    return np.divide(sums, counts, out=np.zeros(wanted.size), where=counts > 0)
