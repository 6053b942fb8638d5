"""The dependency graph: which channel dimensions are coupled and must be pruned together.

:func:`build_dependency_graph` traces the model (:mod:`.tracing`) and walks the graph in
order, letting the rules of :mod:`.layer_rules` (layers) and :mod:`.op_rules` (functions and
tensor methods) say how channel variables flow through each node. The result lists *slots*:
every (module, tensor, dim) whose positions are channels, with the variable id of each
position. Removing a variable removes its position from every slot that holds it.

Example:
    >>> import torch
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Conv2d(8, 4, 3))
    >>> graph = build_dependency_graph(net, torch.randn(1, 3, 16, 16))
    >>> sorted({(s.module, s.tensor, s.dim) for s in graph.slots})[:3]
    [('0', 'bias', 0), ('0', 'weight', 0), ('1', 'bias', 0)]
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch import fx, nn

from sconce.errors import TechniqueError
from sconce_prune.channel.ids import ChannelMap, ParamRef, TensorInfo, VariableSpace
from sconce_prune.channel.tracing import describe_op, node_module, node_shape, trace

logger = logging.getLogger(__name__)


@dataclass
class Slot:
    """Positions of one tensor dimension that are channels.

    Attributes:
        module: qualified name of the module owning the tensor.
        tensor: the parameter or buffer name (``weight``, ``running_mean``).
        dim: the dimension whose positions are channels.
        ids: the variable of each position (length = the tensor's size along ``dim``).
        role: ``out`` when the tensor produces the channels (a conv's filters, a norm's
            affine), ``in`` when it consumes them (the next conv's input columns).
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
    ``h``; pruning updates ``num_heads`` and ``head_dim`` of ``module``."""

    module: str
    ids: np.ndarray


@dataclass
class DependencyGraph:
    """Channel variables, their coupling and where they live in the model.

    Build it with :func:`build_dependency_graph`; :meth:`groups` lists the prunable groups.

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

    def groups(self) -> list[Any]:
        """The prunable channel groups (see :mod:`.groups`)."""
        from sconce_prune.channel.groups import find_groups

        return find_groups(self)


@dataclass
class _Options:
    attention: str = "heads"
    on_unknown: str = "error"
    ignored: Sequence[str] = ()


@dataclass
class GraphBuilder:
    """Walks the traced graph and records coupling; the rules call its helpers."""

    model: nn.Module
    gm: fx.GraphModule
    options: _Options
    space: VariableSpace = field(default_factory=VariableSpace)
    slots: list[Slot] = field(default_factory=list)
    counts: list[CountAttr] = field(default_factory=list)
    constants: list[ShapeConstant] = field(default_factory=list)
    heads: list[HeadLayout] = field(default_factory=list)
    origin: list[str] = field(default_factory=list)
    values: dict[str, Any] = field(default_factory=dict)
    _slot_index: dict[tuple[str, str, int], int] = field(default_factory=dict)
    _count_index: dict[tuple[str, str, int | None], int] = field(default_factory=dict)

    # --- variables and slots ----------------------------------------------------------------
    def fresh(self, count: int, module: str) -> np.ndarray:
        """``count`` new variables created by ``module`` (frozen when it is ignored)."""
        ids = self.space.new(count)
        self.origin.extend([module] * count)
        if self.is_ignored(module):
            self.space.freeze(ids, f"{module!r} is in ignored_layers")
        return ids

    def fixed(self, count: int, module: str, reason: str) -> np.ndarray:
        """``count`` new variables that are never removed."""
        ids = self.space.new(count)
        self.origin.extend([module] * count)
        self.space.freeze(ids, reason)
        return ids

    def slot(self, module: str, tensor: str, dim: int, ids: np.ndarray, role: str) -> None:
        """Record that ``module.tensor`` holds channels ``ids`` along ``dim``.

        The same module called twice shares its weights, so both calls' ids are coupled.
        """
        key = (module, tensor, dim)
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if key in self._slot_index:
            existing = self.slots[self._slot_index[key]]
            self.space.unite(existing.ids, ids)
            return
        self._slot_index[key] = len(self.slots)
        self.slots.append(Slot(module, tensor, dim, ids, role))

    def count(self, module: str, attr: str, ids: np.ndarray, index: int | None = None
              ) -> None:
        """Record that attribute ``module.attr`` counts the kept positions of ``ids``."""
        key = (module, attr, index)
        if key in self._count_index:
            return
        self._count_index[key] = len(self.counts)
        self.counts.append(CountAttr(module, attr, np.asarray(ids).reshape(-1), index))

    def constant(self, node: fx.Node, old: int, out_map: ChannelMap, axis: int) -> None:
        """Record a code constant ``old`` that sizes ``axis`` of ``out_map``."""
        owner = node_module(node)
        self.constants.append(ShapeConstant(
            node.name, describe_op(node), owner, int(old), out_map.ids,
            out_map.axes.index(axis), self._attribute_for(owner, int(old))))

    def _attribute_for(self, owner: str, value: int) -> str | None:
        try:
            module = self.model.get_submodule(owner)
        except AttributeError:
            return None
        names = [k for k, v in vars(module).items()
                 if type(v) is int and v == value and not k.startswith("_")]
        return names[0] if len(names) == 1 else None

    def is_ignored(self, module: str) -> bool:
        """Whether ``module`` (or a module containing it) matches ``ignored_layers``."""
        if not module:
            return False
        parts = module.split(".")
        prefixes = [".".join(parts[:i]) for i in range(1, len(parts) + 1)]
        return any(fnmatch.fnmatchcase(p, pattern)
                   for p in prefixes for pattern in self.options.ignored)

    # --- map algebra --------------------------------------------------------------------------
    def broadcast(self, cmap: ChannelMap, axes: Sequence[int], shape: Sequence[int]
                  ) -> np.ndarray:
        """``cmap``'s ids broadcast over ``axes`` (a sorted superset of its axes)."""
        view = [shape[a] if a in cmap.axes else 1 for a in axes]
        return np.broadcast_to(cmap.ids.reshape(view), [shape[a] for a in axes])

    def unite_maps(self, a: ChannelMap, b: ChannelMap, shape: Sequence[int]) -> ChannelMap:
        """Couple two maps position by position over the union of their axes."""
        axes = tuple(sorted(set(a.axes) | set(b.axes)))
        ids_a, ids_b = self.broadcast(a, axes, shape), self.broadcast(b, axes, shape)
        self.space.unite(ids_a, ids_b)
        return ChannelMap(axes, np.ascontiguousarray(ids_a))

    def merge(self, maps: Iterable[ChannelMap], shape: Sequence[int]) -> list[ChannelMap]:
        """Unite maps that share an axis; disjoint maps stay separate."""
        result: list[ChannelMap] = []
        for cmap in maps:
            current = cmap
            changed = True
            while changed:
                changed = False
                for other in list(result):
                    if set(other.axes) & set(current.axes):
                        result.remove(other)
                        current = self.unite_maps(other, current, shape)
                        changed = True
            result.append(current)
        return [m for m in (r.simplified() for r in result) if m is not None]

    def tie(self, cmap: ChannelMap, axes: Iterable[int]) -> ChannelMap | None:
        """Make ``cmap``'s ids equal along ``axes`` (those axes then never shrink)."""
        ids = cmap.ids
        for axis in axes:
            if axis not in cmap.axes:
                continue
            position = cmap.axes.index(axis)
            first = np.broadcast_to(np.take(ids, [0], axis=position), ids.shape)
            self.space.unite(ids, first)
            ids = np.ascontiguousarray(first)
        return ChannelMap(cmap.axes, ids).simplified()

    def collapse(self, cmap: ChannelMap, drop: Iterable[int]) -> ChannelMap | None:
        """The map after axes ``drop`` disappear (reduced over or contracted).

        If the ids do not vary along the dropped axes the rest survives; otherwise the
        remaining axes are tied so that they never shrink, and nothing survives.
        """
        drop = [a for a in drop if a in cmap.axes]
        if not drop:
            return cmap
        simple = cmap.simplified()
        if simple is None or not set(drop) & set(simple.axes):
            if simple is None:
                return None
            return simple
        rest = [a for a in simple.axes if a not in drop]
        if rest:
            self.tie(simple, rest)
        return None

    def bind_fixed(self, operand: TensorInfo, axis_of: dict[int, int],
                   merged: list[ChannelMap], node: fx.Node, role: str = "out"
                   ) -> list[ChannelMap]:
        """An operand without channel ids along some axes meets channel maps: a parameter
        gets slots there; any other fixed-size operand freezes (or ties) those channels.

        ``axis_of`` maps the maps' axes to the operand's axes.
        """
        result = []
        for cmap in merged:
            covered = [a for a in cmap.axes if a in axis_of
                       and operand.shape[axis_of[a]] > 1 and operand.map_on(axis_of[a]) is None]
            if not covered:
                result.append(cmap)
                continue
            if operand.param is not None and len(cmap.axes) == 1:
                param_axis = operand.param.axes[axis_of[cmap.axes[0]]]
                if param_axis is not None:
                    self.slot(operand.param.module, operand.param.name, param_axis, cmap.ids,
                              role)
                    result.append(cmap)
                    continue
            if set(covered) == set(cmap.axes):
                self.space.freeze(cmap.ids, f"meets a fixed-size tensor in {describe_op(node)} "
                                            f"(node {node.name})")
                result.append(cmap)
            else:
                tied = self.tie(cmap, covered)
                if tied is not None:
                    result.append(tied)
        return result

    # --- unknown operations -----------------------------------------------------------------
    def unknown(self, node: fx.Node, operands: Sequence[Any], why: str = "") -> Any:
        """An operation the rules do not know: an error, or its channels are frozen."""
        maps = [m for info in _tensor_infos(operands) for m in info.maps]
        if maps:
            module = node_module(node)
            if self.options.on_unknown == "error" and not self.is_ignored(module):
                where = f"module {module!r}" if module else "the model's own forward"
                raise TechniqueError(
                    f"prune.channel does not know how channels flow through "
                    f"{describe_op(node)} (graph node {node.name!r}) in {where}"
                    + (f": {why}" if why else "")
                    + "; pass on_unknown='freeze' to keep the channels it touches, or add "
                    f"{module or 'the module'!r} to ignored_layers"
                )
            for cmap in maps:
                self.space.freeze(cmap.ids, f"unknown operation {describe_op(node)}")
        return _plain_value(node_shape(node))

    # --- the walk -----------------------------------------------------------------------------
    def run(self) -> DependencyGraph:
        from sconce_prune.channel.layer_rules import module_rule
        from sconce_prune.channel.op_rules import function_rule

        for node in self.gm.graph.nodes:
            if node.op == "placeholder":
                value = _plain_value(node_shape(node))
            elif node.op == "get_attr":
                value = self._get_attr(node)
            elif node.op == "call_module":
                module = self.gm.get_submodule(str(node.target))
                value = module_rule(self, node, module)
            elif node.op in ("call_function", "call_method"):
                value = function_rule(self, node)
            elif node.op == "output":
                for info in _tensor_infos([self.arg(a) for a in _flatten(node.args)]):
                    for cmap in info.maps:
                        self.space.freeze(cmap.ids, "reaches a model output")
                value = None
            else:  # pragma: no cover - fx has no other node kinds
                value = None
            self.values[node.name] = value
        return DependencyGraph(self.space, self.slots, self.counts, self.constants, self.heads,
                               self.origin, self.values, self.gm, tuple(self.options.ignored))

    def _get_attr(self, node: fx.Node) -> Any:
        shape = node_shape(node)
        if not isinstance(shape, tuple):
            return None
        owner, _, name = str(node.target).rpartition(".")
        return TensorInfo(shape, [], ParamRef(owner, name, tuple(range(len(shape)))))

    def arg(self, value: Any) -> Any:
        """The analysis value of a node argument (constants come back as they are)."""
        if isinstance(value, fx.Node):
            return self.values.get(value.name)
        if isinstance(value, (list, tuple)):
            return type(value)(self.arg(v) for v in value)
        return value


def _flatten(args: Any) -> list[Any]:
    if isinstance(args, (list, tuple)):
        return [x for a in args for x in _flatten(a)]
    if isinstance(args, dict):
        return [x for a in args.values() for x in _flatten(a)]
    return [args]


def _tensor_infos(values: Iterable[Any]) -> list[TensorInfo]:
    found = []
    for value in values:
        if isinstance(value, TensorInfo):
            found.append(value)
        elif isinstance(value, (list, tuple)):
            found.extend(_tensor_infos(value))
        elif isinstance(value, dict):
            found.extend(_tensor_infos(value.values()))
    return found


def _plain_value(shape: Any) -> Any:
    """A value without channel ids for a node of this recorded shape."""
    if isinstance(shape, tuple):
        return TensorInfo(shape)
    if isinstance(shape, list):
        return [_plain_value(s) for s in shape]
    return None


def build_dependency_graph(
    model: nn.Module,
    example_inputs: Any,
    *,
    attention: str = "heads",
    on_unknown: str = "error",
    ignored_layers: Sequence[str] = (),
) -> DependencyGraph:
    """Trace ``model`` and find its coupled channels.

    Args:
        model: the model (not modified).
        example_inputs: a tensor or tuple of tensors it accepts (batch 1 is enough).
        attention: ``heads`` (heads are removed whole) or ``dims`` (the same dims of
            every head are removed).
        on_unknown: ``error`` or ``freeze`` for operations the engine does not know.
        ignored_layers: fnmatch patterns of modules whose output channels stay.

    Returns:
        The :class:`DependencyGraph`.

    Raises:
        TechniqueError: the model cannot be traced, or an unknown operation touches
            prunable channels (with ``on_unknown="error"``); the message names the
            operation and the module.

    Example:
        >>> import torch
        >>> g = build_dependency_graph(torch.nn.Linear(4, 2), torch.randn(1, 4))
        >>> g.groups()
        []
    """
    gm = trace(model, example_inputs, leaves=ignored_layers)
    builder = GraphBuilder(model, gm, _Options(attention, on_unknown, tuple(ignored_layers)))
    return builder.run()
