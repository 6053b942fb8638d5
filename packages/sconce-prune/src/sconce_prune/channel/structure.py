"""What the dependency analysis found: slots, counted attributes, constants and heads.

A :class:`DependencyGraph` lists every (module, tensor, dim) whose positions are channels
(:class:`Slot`), with the variable id of each position. Removing a variable removes its
position from every slot that holds it. :func:`sconce_prune.channel.build_dependency_graph`
builds it; this module only holds the result, so everything else can depend on it without
depending on the analysis.

Example:
    >>> import numpy as np
    >>> Slot("conv", "weight", 0, np.arange(4), "out").role
    'out'
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch import fx, nn

from sconce_prune.channel.groups import ChannelGroup, find_groups
from sconce_prune.channel.ids import VariableSpace

logger = logging.getLogger(__name__)

ROLES = ("out", "in", "carried")
"""Slot roles: ``out`` tensors produce the channels (filters, norm affines), ``in`` tensors
read them (the next layer's input columns), ``carried`` tensors hold one value per channel
without producing it (a spiking neuron's decay); all are sliced, only ``out`` and ``in``
are scored."""


@dataclass
class Slot:
    """Positions of one tensor dimension that are channels.

    Attributes:
        module: qualified name of the module owning the tensor.
        tensor: the parameter or buffer name (``weight``, ``running_mean``).
        dim: the dimension whose positions are channels.
        ids: the variable of each position (length = the tensor's size along ``dim``).
        role: one of :data:`ROLES`.

    Example:
        >>> Slot("fc", "weight", 1, np.arange(3), "in").dim
        1
    """

    module: str
    tensor: str
    dim: int
    ids: np.ndarray
    role: str


@dataclass
class CountAttr:
    """A module attribute that counts channels (``in_channels``, ``num_features``).

    After pruning it becomes the number of kept positions of ``ids``; ``index`` addresses an
    entry of a tuple attribute (``normalized_shape``).

    Example:
        >>> CountAttr("bn", "num_features", np.arange(8)).attr
        'num_features'
    """

    module: str
    attr: str
    ids: np.ndarray
    index: int | None = None


@dataclass
class ShapeConstant:
    """A constant in the code (a ``view`` size, a ``split`` size) that spans channels.

    When pruning changes the size it stands for, the module attribute it came from
    (``attr`` on ``module``) is updated; without such an attribute those channels are
    frozen.

    Example:
        >>> ShapeConstant("view", ".view()", "attn", 64, np.arange(64), 0, "dim").old
        64
    """

    node: str
    op: str
    module: str
    old: int
    ids: np.ndarray
    axis: int
    attr: str | None


@dataclass
class HeadLayout:
    """The heads of an attention layer: ``ids[h, d]`` is the variable of dim ``d`` of head
    ``h``; pruning updates ``num_heads`` and ``head_dim`` of ``module``.

    Example:
        >>> HeadLayout("attn", np.arange(8).reshape(2, 4)).ids.shape
        (2, 4)
    """

    module: str
    ids: np.ndarray


@dataclass
class DependencyGraph:
    """Channel variables, their coupling and where they live in the model.

    Attributes:
        space: the variables (coupling and frozen flags).
        slots: every tensor dimension holding channels.
        counts: attributes that count channels.
        constants: code constants spanning channels.
        heads: attention head layouts.
        origin: the module that created each variable (for naming groups).
        values: what the analysis knew about each traced node (for verification).
        graph_module: the traced graph.
        leaves: module patterns traced as opaque leaves (the ignored layers).
        is_leaf: which further modules were kept opaque (layers described by a rule), so a
            retrace sees the same graph.

    Example:
        >>> import torch
        >>> from sconce_prune.channel import build_dependency_graph
        >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Conv2d(8, 4, 3))
        >>> graph = build_dependency_graph(net, torch.randn(1, 3, 16, 16))
        >>> sorted({(s.module, s.tensor, s.dim) for s in graph.slots})[:3]
        [('0', 'bias', 0), ('0', 'weight', 0), ('1', 'bias', 0)]
        >>> [(g.name, g.size) for g in graph.groups()]
        [('0', 8)]
    """

    space: VariableSpace
    slots: list[Slot]
    counts: list[CountAttr]
    constants: list[ShapeConstant]
    heads: list[HeadLayout]
    origin: list[str]
    values: dict[str, Any]
    graph_module: fx.GraphModule
    leaves: tuple[str, ...] = ()
    is_leaf: Callable[[nn.Module], bool] | None = None
    _roots: list[np.ndarray] | None = field(default=None, repr=False)
    _groups: tuple[int, list[ChannelGroup]] | None = field(default=None, repr=False)

    def slot_roots(self) -> list[np.ndarray]:
        """The root variable of every position of every slot (computed once: pruning only
        freezes variables after the analysis, which leaves the roots as they are)."""
        if self._roots is None:
            self._roots = [self.space.roots(slot.ids) for slot in self.slots]
        return self._roots

    def groups(self) -> list[ChannelGroup]:
        """The prunable channel groups (see :mod:`.groups`), found again only after more
        channels were frozen."""
        if self._groups is None or self._groups[0] != self.space.version:
            found = find_groups(self.space, self.slot_roots(), [s.role for s in self.slots],
                                self.origin)
            self._groups = (self.space.version, found)
        return list(self._groups[1])
