"""How important each channel is: a criterion is a function of a channel group.

:func:`group_view` shows a criterion one group: every tensor that holds the group's channels
(:class:`GroupTensor`: the producing filters and norm affines, role ``out``; the next layers'
input columns, ``in``; per-channel state, ``carried``) with the positions of each channel,
and, when gradient batches were given, ``w * dL/dw`` of each batch. A criterion returns one
score per prunable channel; higher means more important. The named criteria:

- ``l1`` / ``l2``: norms of the producing tensors' slices (a channel spread over several
  positions, a flatten into a Linear, averages them);
- ``bn_scale``: |gamma| of the norm layer that follows, ``l2`` where there is none;
- ``group_l2``: the squared L2 norm of the channel's weights in *every* coupled layer,
  producers and consumers (biases left out), as Torch-Pruning's ``GroupMagnitudeImportance``;
- ``taylor``: first-order Taylor, ``sum over batches of |w * dL/dw|`` of the producing tensors;
- ``group_taylor``: the loss change of removing the whole channel to first order, every coupled
  tensor together, squared per batch and summed (Molchanov et al. 2019);
- ``hessian``: the second-order (OBD) saliency ``w^2 * diag(H)`` with the Fisher
  approximation ``diag(H) ~ sum of g^2``, over every coupled tensor;
- ``random``: a control.

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
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from sconce.errors import ConfigError, DataError
from sconce_prune.channel.groups import ChannelGroup
from sconce_prune.channel.structure import DependencyGraph

logger = logging.getLogger(__name__)

_NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)

GRADIENT_CRITERIA = ("taylor", "group_taylor", "hessian")
"""Criteria that need gradient batches."""

CRITERIA = ("l1", "l2", "bn_scale", "group_l2", *GRADIENT_CRITERIA, "random")
"""The named criteria."""


@dataclass
class GroupTensor:
    """One tensor holding a group's channels, as a criterion sees it.

    Attributes:
        module: the qualified name of the module owning the tensor.
        layer: that module.
        name: the tensor's name in it (``weight``, ``running_var``).
        role: ``out`` (produces the channels), ``in`` (reads them) or ``carried``.
        dim: the dimension along which the channels lie.
        value: the whole tensor.
        positions: ``positions[c]`` are the indices along ``dim`` of channel ``c`` (one per
            channel usually; several when a flatten spreads a channel over a Linear's inputs).
        products: ``w * dL/dw`` of the tensor for each gradient batch (empty without batches
            or for buffers).

    Example:
        >>> t = GroupTensor("fc", nn.Linear(3, 2), "weight", "in", 1,
        ...                 torch.arange(6.0).view(2, 3), np.array([[0], [2]]))
        >>> t.per_channel().tolist()
        [[[0.0, 3.0]], [[2.0, 5.0]]]
    """

    module: str
    layer: nn.Module
    name: str
    role: str
    dim: int
    value: torch.Tensor
    positions: np.ndarray
    products: list[torch.Tensor] = field(default_factory=list)

    @property
    def is_parameter(self) -> bool:
        """Whether the tensor is a trained parameter (not a buffer such as running stats)."""
        return isinstance(self.value, nn.Parameter)

    def per_channel(self, tensor: torch.Tensor | None = None) -> torch.Tensor:
        """``tensor`` (default: :attr:`value`) gathered per channel: shape
        ``(channels, positions per channel, *the other dims)``."""
        source = (self.value if tensor is None else tensor).detach()
        index = torch.as_tensor(self.positions, device=source.device)
        return source.movedim(self.dim, 0)[index]


@dataclass
class GroupView:
    """A channel group with its tensors: what a criterion receives.

    Attributes:
        group: the group (its ``name``, ``roots``, ``size``).
        tensors: every tensor holding its channels (tensors where the channels do not all
            occupy the same number of positions are left out).

    Example:
        >>> view = GroupView(ChannelGroup("conv", np.arange(2), 2, [0], 1), [])
        >>> view.channels, view.name
        (2, 'conv')
    """

    group: ChannelGroup
    tensors: list[GroupTensor]

    @property
    def name(self) -> str:
        """The module that produces the channels."""
        return self.group.name

    @property
    def channels(self) -> int:
        """How many prunable channels the criterion scores."""
        return int(self.group.roots.size)


Criterion = Callable[[GroupView], Any]
"""``criterion(view) -> scores``: one score per prunable channel, higher = more important."""


def gradient_products(model: nn.Module, batches: Iterable[tuple[Any, torch.Tensor]],
                      adapter: Any) -> dict[str, list[torch.Tensor]]:
    """``w * dL/dw`` of every trainable parameter, one tensor per batch.

    Args:
        model: the model (its gradients are cleared afterwards; eval-mode statistics).
        batches: ``(inputs, targets)`` pairs.
        adapter: runs the model and computes the loss (a :class:`sconce.ModelAdapter`).

    Returns:
        Parameter name -> the product of each batch.

    Raises:
        DataError: no batch came.

    Example:
        >>> from sconce import ClassifierAdapter
        >>> lin = nn.Linear(2, 2)
        >>> p = gradient_products(lin, [(torch.randn(4, 2), torch.tensor([0, 1, 0, 1]))],
        ...                       ClassifierAdapter())
        >>> sorted(p), len(p["weight"])
        (['bias', 'weight'], 1)
    """
    was_training = model.training
    model.eval()
    products: dict[str, list[torch.Tensor]] = {}
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    try:
        for inputs, targets in batches:
            for p in params.values():
                p.grad = None
            adapter.loss(adapter.forward(model, inputs), targets).backward()
            with torch.no_grad():
                for name, p in params.items():
                    if p.grad is not None:
                        products.setdefault(name, []).append(p.detach() * p.grad)
    finally:
        for p in params.values():
            p.grad = None
        model.train(was_training)
    if not products:
        raise DataError("a gradient criterion got no training batch; give training data or "
                        "use importance='bn_scale'")
    return products


def group_view(model: nn.Module, graph: DependencyGraph, group: ChannelGroup,
               products: dict[str, list[torch.Tensor]] | None = None,
               modules: dict[str, nn.Module] | None = None) -> GroupView:
    """The tensors of ``group`` with the positions of each of its channels.

    Example:
        >>> from sconce_prune.channel.graph import build_dependency_graph
        >>> net = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1))
        >>> graph = build_dependency_graph(net, torch.randn(1, 2))
        >>> [(t.module, t.name, t.role) for t in group_view(net, graph, graph.groups()[0]).tensors]
        [('0', 'weight', 'out'), ('0', 'bias', 'out'), ('1', 'weight', 'in')]
    """
    roots_per_slot = graph.slot_roots()
    tensors = []
    for index in group.slots:
        slot = graph.slots[index]
        positions = _positions(roots_per_slot[index], group.roots)
        if positions is None:
            logger.debug("%s.%s holds the channels of %s unevenly; not shown to criteria",
                         slot.module, slot.tensor, group.name)
            continue
        layer = modules[slot.module] if modules is not None else model.get_submodule(slot.module)
        qualified = f"{slot.module}.{slot.tensor}".lstrip(".")
        tensors.append(GroupTensor(slot.module, layer, slot.tensor, slot.role, slot.dim,
                                   getattr(layer, slot.tensor), positions,
                                   list((products or {}).get(qualified, []))))
    return GroupView(group, tensors)


def _positions(roots: np.ndarray, wanted: np.ndarray) -> np.ndarray | None:
    """``(channels, k)`` positions of each wanted root in ``roots``; None if uneven."""
    index = np.clip(np.searchsorted(wanted, roots), 0, wanted.size - 1)
    present = np.nonzero(wanted[index] == roots)[0]
    owner = index[present]
    counts = np.bincount(owner, minlength=wanted.size)
    if counts.size == 0 or counts.min() == 0 or counts.min() != counts.max():
        return None
    order = np.argsort(owner, kind="stable")
    return present[order].reshape(wanted.size, int(counts[0]))


# --- the named criteria ----------------------------------------------------------------------
def _norms(view: GroupView, order: int, tensors: Sequence[GroupTensor]) -> list[np.ndarray]:
    scores = []
    for t in tensors:
        per = t.per_channel().float()
        flat = per.reshape(per.shape[0], per.shape[1], -1)
        scores.append(torch.linalg.vector_norm(flat, ord=order, dim=2).mean(1).cpu().numpy())
    return scores


def _producers(view: GroupView, consumers: bool) -> list[GroupTensor]:
    roles = ("out", "in") if consumers else ("out",)
    chosen = [t for t in view.tensors if t.role in roles and t.is_parameter]
    return chosen or [t for t in view.tensors if t.is_parameter]


def _with_consumers(scores: list[np.ndarray], consumers: bool) -> list[np.ndarray]:
    if not consumers:
        return scores
    return [s / (float(s.mean()) or 1.0) for s in scores]


def _weights(view: GroupView) -> list[GroupTensor]:
    """Every coupled parameter except biases (Torch-Pruning's group magnitude)."""
    return [t for t in view.tensors if t.is_parameter and t.role in ("out", "in")
            and "bias" not in t.name]


def _coupled(view: GroupView) -> list[GroupTensor]:
    return [t for t in view.tensors if t.is_parameter and t.role in ("out", "in")]


def _over_batches(tensor: GroupTensor, term: Callable[[torch.Tensor], torch.Tensor]
                  ) -> torch.Tensor:
    """``sum over batches of term(w * dL/dw)``, gathered per channel."""
    total = term(tensor.per_channel(tensor.products[0]))
    for product in tensor.products[1:]:
        total = total + term(tensor.per_channel(product))
    return total


def _sum_per_channel(tensor: torch.Tensor) -> np.ndarray:
    return tensor.reshape(tensor.shape[0], -1).sum(1).double().cpu().numpy()


def criterion_scores(view: GroupView, criterion: str, consumers: bool = False
                     ) -> list[np.ndarray]:
    """Per-tensor score arrays of a named (non-random) criterion, to be aggregated.

    Example:
        >>> view = GroupView(ChannelGroup("c", np.arange(2), 2, [0], 1), [GroupTensor(
        ...     "c", nn.Linear(1, 2), "weight", "out", 0,
        ...     nn.Parameter(torch.tensor([[3.0], [-4.0]])), np.array([[0], [1]]))])
        >>> criterion_scores(view, "l1")[0].tolist()
        [3.0, 4.0]
    """
    if criterion in ("l1", "l2"):
        return _with_consumers(_norms(view, 1 if criterion == "l1" else 2,
                                      _producers(view, consumers)), consumers)
    if criterion == "bn_scale":
        norms = [t for t in _producers(view, False)
                 if t.name == "weight" and isinstance(t.layer, _NORMS)]
        return _norms(view, 1, norms) if norms else criterion_scores(view, "l2")
    if criterion == "group_l2":
        return [_sum_per_channel(t.per_channel().float() ** 2) for t in _weights(view)]
    if not any(t.products for t in view.tensors):
        raise ConfigError(f"importance={criterion!r} needs gradient batches; give training "
                          "data or choose importance='bn_scale'")
    if criterion == "taylor":
        tensors = [t for t in _producers(view, consumers) if t.products]
        return _with_consumers([_sum_per_channel(_over_batches(t, lambda p: p.abs()))
                                for t in tensors], consumers)
    if criterion == "hessian":
        return [_sum_per_channel(_over_batches(t, lambda p: p**2))
                for t in _coupled(view) if t.products]
    if criterion == "group_taylor":  # per batch: the whole channel's first-order change
        total = np.zeros(view.channels)
        for b in range(max(len(t.products) for t in view.tensors)):
            change = np.zeros(view.channels)
            for t in _coupled(view):
                if len(t.products) > b:
                    change += _sum_per_channel(t.per_channel(t.products[b]))
            total += change**2
        return [total]
    raise ConfigError(f"unknown importance {criterion!r}; choose one of {', '.join(CRITERIA)}")


def score_groups(
    model: nn.Module,
    graph: DependencyGraph,
    groups: Sequence[ChannelGroup],
    importance: str | Criterion = "l2",
    aggregation: str = "sum",
    products: dict[str, list[torch.Tensor]] | None = None,
    seed: int = 0,
    consumers: bool = False,
) -> list[np.ndarray]:
    """One score per prunable channel of each group (aligned with ``group.roots``).

    Args:
        model: the model the graph was built from.
        graph: its dependency graph.
        groups: the groups to score.
        importance: a name of :data:`CRITERIA` or a :data:`Criterion` function.
        aggregation: ``sum``, ``mean`` or ``max`` over the per-tensor scores of a named
            criterion.
        products: from :func:`gradient_products`, for the gradient criteria.
        seed: for ``random``.
        consumers: ``l1`` / ``l2`` / ``taylor`` also score a channel by the weights that read
            it (each tensor's scores normalised by their mean).

    Returns:
        A list of float arrays; higher means more important.

    Raises:
        ConfigError: a criterion function returned the wrong number of scores.

    Example:
        >>> from sconce_prune.channel.graph import build_dependency_graph
        >>> net = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1))
        >>> graph = build_dependency_graph(net, torch.randn(1, 2))
        >>> first_input = lambda view: view.tensors[0].per_channel()[:, 0, 0]
        >>> len(score_groups(net, graph, graph.groups(), first_input)[0])
        3
    """
    rng = np.random.default_rng(seed)
    if aggregation not in ("sum", "mean", "max"):
        raise ConfigError(f"aggregation must be 'sum', 'mean' or 'max', got {aggregation!r}")
    reduce = getattr(np, aggregation)
    results = []
    modules = dict(model.named_modules())
    for group in groups:
        count = int(group.roots.size)
        if importance == "random":
            results.append(rng.random(count))
            continue
        view = group_view(model, graph, group, products, modules)
        if callable(importance):
            results.append(_checked(importance(view), count, group.name))
            continue
        per_tensor = criterion_scores(view, importance, consumers)
        results.append(reduce(np.stack(per_tensor), axis=0) if per_tensor
                       else np.zeros(count))
    return results


def _checked(scores: Any, count: int, name: str) -> np.ndarray:
    if isinstance(scores, torch.Tensor):
        scores = scores.detach().cpu().numpy()
    array = np.asarray(scores, dtype=np.float64).reshape(-1)
    if array.size != count:
        raise ConfigError(f"the importance function returned {array.size} scores for group "
                          f"{name!r}, which has {count} prunable channels; return one score "
                          "per channel of the view it receives")
    return array
