"""The walk over the traced graph that finds which channel dimensions are coupled.

:class:`GraphBuilder` visits every node in order and asks its rule table (see
:mod:`.rules`) how channel variables flow through the node: a layer rule for
``call_module`` nodes, a function rule for functions and tensor methods. Rules call the
builder's helpers to create variables, record slots and count attributes, and to couple,
tie or freeze channels. The builder knows no layer or operation itself.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from sconce_prune.channel.rules import default_rules
    >>> from sconce_prune.channel.tracing import trace
    >>> net = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1))
    >>> builder = GraphBuilder(net, trace(net, torch.randn(1, 2)), default_rules())
    >>> [(s.module, s.tensor, s.dim, s.role) for s in builder.run().slots][:3]
    [('0', 'weight', 0, 'out'), ('0', 'bias', 0, 'out'), ('1', 'weight', 0, 'out')]
"""

from __future__ import annotations

import fnmatch
import logging
import operator
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from torch import fx, nn

from sconce.errors import TechniqueError
from sconce_prune.channel.ids import ChannelMap, ParamRef, TensorInfo, VariableSpace
from sconce_prune.channel.structure import (
    CountAttr,
    DependencyGraph,
    HeadLayout,
    ShapeConstant,
    Slot,
)
from sconce_prune.channel.tracing import describe_op, node_module, node_shape

logger = logging.getLogger(__name__)


@dataclass
class GraphOptions:
    """How the walk treats attention, unknown operations and ignored layers.

    Attributes:
        attention: ``heads`` (heads are removed whole) or ``dims`` (the same dims of
            every head are removed).
        on_unknown: ``error`` or ``freeze`` for operations no rule describes.
        ignored: fnmatch patterns of modules whose output channels stay.

    Example:
        >>> GraphOptions(on_unknown="freeze").attention
        'heads'
    """

    attention: str = "heads"
    on_unknown: str = "error"
    ignored: Sequence[str] = ()


@dataclass
class LayerCall:
    """One call of a layer (a ``call_module`` node), as a layer rule sees it.

    Attributes:
        node: the graph node.
        name: the layer's qualified name in the model.
        module: the layer.
        args, kwargs: the analysis value of each argument (a :class:`TensorInfo` for a
            tensor, lists of them, or the constant itself).
        out_shape: the recorded output shape (a tuple, or a list of them for several
            outputs).

    Example:
        >>> call = LayerCall(None, "fc", nn.Linear(2, 3), [TensorInfo((1, 2))], {}, (1, 3))
        >>> call.input.shape
        (1, 2)
    """

    node: Any
    name: str
    module: nn.Module
    args: list[Any]
    kwargs: dict[str, Any]
    out_shape: Any

    @property
    def input(self) -> Any:
        """The first argument (positional, else keyword): the layer's main input."""
        return self.args[0] if self.args else next(iter(self.kwargs.values()), None)

    @property
    def tensors(self) -> list[TensorInfo]:
        """Every tensor argument, in order (nested lists and tuples included)."""
        return tensor_infos([*self.args, *self.kwargs.values()])


LayerRule = Callable[["GraphBuilder", LayerCall], Any]
"""``rule(builder, call)``: record the layer's slots and return its output's value."""

FunctionRule = Callable[["GraphBuilder", fx.Node, list[Any], dict[str, Any], Any], Any]
"""``rule(builder, node, args, kwargs, out_shape)`` for a function or tensor method."""


class RuleLookup(Protocol):
    """What the walk asks its rule table (see :class:`sconce_prune.channel.rules.RuleTable`)."""

    def layer_rule(self, module: nn.Module) -> LayerRule | None:
        """The rule for ``module``'s type, or None."""

    def function_rule(self, target: Any) -> FunctionRule | None:
        """The rule for a function or tensor method ``target``, or None."""

    def is_leaf(self, module: nn.Module) -> bool:
        """Whether ``module`` is described by a rule and must not be traced into."""


@dataclass
class GraphBuilder:
    """Walks the traced graph and records coupling; the rules call its helpers.

    Example:
        >>> import torch
        >>> from sconce_prune.channel.rules import default_rules
        >>> from sconce_prune.channel.tracing import trace
        >>> net = nn.Sequential(nn.Linear(2, 3))
        >>> len(GraphBuilder(net, trace(net, torch.randn(1, 2)), default_rules()).run().slots)
        2
    """

    model: nn.Module
    gm: fx.GraphModule
    rules: RuleLookup
    options: GraphOptions = field(default_factory=GraphOptions)
    space: VariableSpace = field(default_factory=VariableSpace)
    slots: list[Slot] = field(default_factory=list)
    counts: list[CountAttr] = field(default_factory=list)
    constants: list[ShapeConstant] = field(default_factory=list)
    heads: list[HeadLayout] = field(default_factory=list)
    origin: list[str] = field(default_factory=list)
    values: dict[str, Any] = field(default_factory=dict)
    _modules: dict[str, nn.Module] = field(default_factory=dict)
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
        maps = [m for info in tensor_infos(operands) for m in info.maps]
        if maps:
            module = node_module(node)
            if self.options.on_unknown == "error" and not self.is_ignored(module):
                where = f"module {module!r}" if module else "the model's own forward"
                raise TechniqueError(
                    f"prune.channel does not know how channels flow through "
                    f"{describe_op(node)} (graph node {node.name!r}) in {where}"
                    + (f": {why}" if why else "")
                    + "; pass on_unknown='freeze' to keep the channels it touches, or add "
                    f"{module or 'the module'!r} to ignored_layers" + self._rule_hint(module)
                )
            for cmap in maps:
                self.space.freeze(cmap.ids, f"unknown operation {describe_op(node)}")
        return plain_value(node_shape(node))

    def _rule_hint(self, module: str) -> str:
        if not module:
            return ""
        kind = type(self.model.get_submodule(module)).__name__
        return f", or describe {kind} with sconce_prune.channel.register_rule"

    # --- the walk -----------------------------------------------------------------------------
    def run(self) -> DependencyGraph:
        """Visit every node in order; return what was found."""
        for node in self.gm.graph.nodes:
            if node.op == "placeholder":
                value = plain_value(node_shape(node))
            elif node.op == "get_attr":
                value = self._get_attr(node)
            elif node.op == "call_module":
                value = self._call_module(node)
            elif node.op in ("call_function", "call_method"):
                value = self._call_function(node)
            elif node.op == "output":
                for info in tensor_infos([self.arg(a) for a in _flatten(node.args)]):
                    for cmap in info.maps:
                        self.space.freeze(cmap.ids, "reaches a model output")
                value = None
            else:  # pragma: no cover - fx has no other node kinds
                value = None
            self.values[node.name] = value
        return DependencyGraph(self.space, self.slots, self.counts, self.constants, self.heads,
                               self.origin, self.values, self.gm, tuple(self.options.ignored),
                               self.rules.is_leaf)

    def _call_module(self, node: fx.Node) -> Any:
        name = str(node.target)
        if not self._modules:
            self._modules = dict(self.gm.named_modules())
        module = self._modules[name]
        args = [self.arg(a) for a in node.args]
        kwargs = {k: self.arg(v) for k, v in node.kwargs.items()}
        rule = self.rules.layer_rule(module)
        if rule is None:
            return self.unknown(node, [*args, *kwargs.values()],
                                f"{type(module).__name__} is not a supported layer (describe it "
                                "with sconce_prune.channel.register_rule)")
        return rule(self, LayerCall(node, name, module, args, kwargs, node_shape(node)))

    def _call_function(self, node: fx.Node) -> Any:
        out_shape = node_shape(node)
        args = [self.arg(a) for a in node.args]
        kwargs = {k: self.arg(v) for k, v in node.kwargs.items()}
        if node.target is operator.getitem and not isinstance(args[0], TensorInfo):
            return _select_from_list(args[0], node.args[1])
        if out_shape is None:  # sizes, dtypes, Python numbers: no channels flow
            return None
        rule = self.rules.function_rule(node.target)
        if rule is None:
            return self.unknown(node, [*args, *kwargs.values()])
        return rule(self, node, args, kwargs, out_shape)

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


def tensor_infos(values: Iterable[Any]) -> list[TensorInfo]:
    """Every :class:`TensorInfo` in ``values``, nested lists, tuples and dicts included.

    Example:
        >>> [t.shape for t in tensor_infos([TensorInfo((1, 2)), [3, TensorInfo((4,))]])]
        [(1, 2), (4,)]
    """
    found = []
    for value in values:
        if isinstance(value, TensorInfo):
            found.append(value)
        elif isinstance(value, (list, tuple)):
            found.extend(tensor_infos(value))
        elif isinstance(value, dict):
            found.extend(tensor_infos(value.values()))
    return found


def plain_value(shape: Any) -> Any:
    """A value without channel ids for a node of this recorded shape (a tuple, or a list
    of them).

    Example:
        >>> plain_value([(1, 2), (3,)])[1].shape
        (3,)
    """
    if isinstance(shape, tuple):
        return TensorInfo(shape)
    if isinstance(shape, list):
        return [plain_value(s) for s in shape]
    return None


def _select_from_list(values: Any, index: Any) -> Any:
    if isinstance(values, (list, tuple)) and isinstance(index, (int, slice)):
        return values[index]
    return None
