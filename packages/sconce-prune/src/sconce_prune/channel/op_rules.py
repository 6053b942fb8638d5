"""How channels flow through functions and tensor methods (``call_function`` /
``call_method`` nodes): elementwise ops and residual adds couple, concat concatenates,
split/chunk slices, reshapes regroup, permutes renumber, matmuls contract (attention heads),
reductions consume.

Example:
    >>> import operator
    >>> operator.add in ELEMENTWISE
    True
"""

from __future__ import annotations

import logging
import operator
from collections import defaultdict
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx

from sconce_prune.channel.builder import FunctionRule, GraphBuilder, plain_value
from sconce_prune.channel.ids import ChannelMap, ParamRef, TensorInfo
from sconce_prune.channel.tracing import node_module

logger = logging.getLogger(__name__)

ELEMENTWISE: set[Any] = {
    operator.add, operator.sub, operator.mul, operator.truediv, operator.floordiv,
    operator.iadd, operator.isub, operator.imul, operator.itruediv, operator.pow,
    torch.add, torch.sub, torch.subtract, torch.mul, torch.multiply, torch.div, torch.divide,
    torch.true_divide, torch.maximum, torch.minimum, torch.where, torch.pow, torch.lerp,
    torch.masked_fill, torch.atan2, torch.fmod, torch.remainder,
    "add", "sub", "mul", "div", "true_divide", "add_", "sub_", "mul_", "div_", "pow",
    "maximum", "minimum", "masked_fill", "masked_fill_", "where", "lerp", "fmod",
}
"""Broadcasting elementwise operations: operands' channels at the same position couple."""

UNARY: set[Any] = {
    torch.relu, torch.relu_, F.relu, F.relu_, F.relu6, F.gelu, F.silu, F.mish, F.hardswish,
    F.hardsigmoid, F.hardtanh, F.leaky_relu, F.elu, F.selu, F.celu, F.softplus, F.softsign,
    F.logsigmoid, torch.sigmoid, F.sigmoid, torch.tanh, F.tanh, torch.exp, torch.log,
    torch.abs, torch.neg, operator.neg, torch.sqrt, torch.rsqrt, torch.erf, torch.clamp,
    torch.clip, torch.square, torch.sin, torch.cos, F.dropout, F.dropout1d, F.dropout2d,
    F.dropout3d, F.alpha_dropout, torch.softmax, F.softmax, F.log_softmax, torch.log_softmax,
    F.normalize, F.max_pool1d, F.max_pool2d, F.max_pool3d, F.avg_pool1d, F.avg_pool2d,
    F.avg_pool3d, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d,
    F.adaptive_max_pool1d, F.adaptive_max_pool2d, F.adaptive_max_pool3d, F.interpolate,
    F.pad, torch.zeros_like, torch.ones_like, torch.empty_like, torch.rand_like,
    torch.randn_like, torch.clone, torch.nn.functional.gelu,
    "relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_", "exp", "log", "abs", "neg",
    "sqrt", "rsqrt", "clamp", "clamp_", "clamp_min", "clamp_max", "clip", "softmax",
    "log_softmax", "contiguous", "clone", "detach", "float", "double", "half", "bfloat16",
    "to", "type", "type_as", "cpu", "cuda", "square", "sin", "cos", "erf", "requires_grad_",
}
"""Operations that keep every channel where it is (the first tensor argument's layout)."""

RESHAPES: set[Any] = {torch.flatten, torch.reshape, torch.squeeze, torch.unsqueeze,
                      torch.unflatten, "view", "reshape", "flatten", "unflatten", "squeeze",
                      "unsqueeze", "view_as", "reshape_as"}
PERMUTES: set[Any] = {torch.permute, torch.transpose, torch.swapaxes, torch.t, "permute",
                      "transpose", "swapaxes", "t"}
REDUCTIONS: set[Any] = {torch.mean, torch.sum, torch.amax, torch.amin, torch.std, torch.var,
                        torch.logsumexp, torch.prod, torch.max, torch.min, "mean", "sum",
                        "amax", "amin", "std", "var", "logsumexp", "prod", "max", "min"}
MATMULS: set[Any] = {torch.matmul, operator.matmul, torch.bmm, torch.mm, "matmul", "bmm",
                     "mm"}
CONCATS: set[Any] = {torch.cat, torch.concat, torch.concatenate}
SPLITS: set[Any] = {torch.split, torch.chunk, "split", "chunk"}
UNBINDS: set[Any] = {torch.unbind, "unbind"}
EXPANDS: set[Any] = {"expand", "expand_as", torch.broadcast_to}
REPEATS: set[Any] = {"repeat", torch.tile, "tile"}


def _tensors(args: list[Any], kwargs: dict[str, Any]) -> list[TensorInfo]:
    found = [a for a in args if isinstance(a, TensorInfo)]
    found += [v for v in kwargs.values() if isinstance(v, TensorInfo)]
    for a in args:
        if isinstance(a, (list, tuple)):
            found += [v for v in a if isinstance(v, TensorInfo)]
    return found


def _dim_arg(args: list[Any], kwargs: dict[str, Any], position: int, default: Any) -> Any:
    if "dim" in kwargs:
        return kwargs["dim"]
    if len(args) > position and not isinstance(args[position], TensorInfo):
        return args[position]
    return default


# --- elementwise and passthrough ---------------------------------------------------------------
def _elementwise(builder: GraphBuilder, node: fx.Node, args: list[Any], kwargs: dict[str, Any],
                 out_shape: Any) -> Any:
    operands = _tensors(args, kwargs)
    if not isinstance(out_shape, tuple):
        return builder.unknown(node, operands)
    nd = len(out_shape)
    placed = [m.moved({a: a + nd - op.ndim for a in m.axes}) for op in operands for m in op.maps]
    merged = builder.merge(placed, out_shape)
    for op in operands:
        offset = nd - op.ndim
        merged = builder.bind_fixed(op, {a: a - offset for a in range(offset, nd)}, merged,
                                    node)
    return TensorInfo(out_shape, merged)


def _passthrough(builder: GraphBuilder, node: fx.Node, args: list[Any],
                 kwargs: dict[str, Any], out_shape: Any) -> Any:
    operands = _tensors(args, kwargs)
    if not operands:
        return plain_value(out_shape)
    x = operands[0]
    if isinstance(out_shape, list):
        return [_passthrough(builder, node, args, kwargs, s) for s in out_shape]
    if len(out_shape) != x.ndim or any(out_shape[a] != x.shape[a]
                                       for m in x.maps for a in m.axes):
        return builder.unknown(node, operands, "it changes the size of a channel axis")
    return TensorInfo(out_shape, list(x.maps), x.param)


# --- reshapes -------------------------------------------------------------------------------------
def reshape_groups(ins: tuple[int, ...], outs: tuple[int, ...]
                   ) -> list[tuple[list[int], list[int]]]:
    """Pair runs of input axes with the runs of output axes they become.

    Example:
        >>> reshape_groups((1, 64, 7, 7), (1, 3136))
        [([0], [0]), ([1, 2, 3], [1])]
    """
    groups, i, j, n, m = [], 0, 0, len(ins), len(outs)
    while i < n or j < m:
        first_in, first_out = [], []
        p_in = p_out = 1
        if i < n:
            first_in.append(i)
            p_in *= ins[i]
            i += 1
        if j < m:
            first_out.append(j)
            p_out *= outs[j]
            j += 1
        while p_in != p_out:
            if p_in < p_out and i < n:
                first_in.append(i)
                p_in *= ins[i]
                i += 1
            elif j < m:
                first_out.append(j)
                p_out *= outs[j]
                j += 1
            else:
                break
        while i < n and ins[i] == 1 and (j >= m or outs[j] != 1):
            first_in.append(i)
            i += 1
        while j < m and outs[j] == 1 and (i >= n or ins[i] != 1):
            first_out.append(j)
            j += 1
        groups.append((first_in, first_out))
    return groups


def reshape_rule(builder: GraphBuilder, node: fx.Node, x: TensorInfo, out_shape: Any,
                 sizes: list[Any] | None) -> Any:
    """A view/reshape/flatten: channel ids are regrouped with the axes they move with.

    ``sizes`` are the requested sizes when the code gave them; constants among them that
    size a channel axis are recorded so pruning can update their attribute.
    """
    if not isinstance(out_shape, tuple):
        return builder.unknown(node, [x])
    groups = reshape_groups(x.shape, out_shape)
    group_of = {i: g for g, (ins, _) in enumerate(groups) for i in ins}
    by_group: dict[int, list[ChannelMap]] = defaultdict(list)
    for cmap in x.maps:
        owners = {group_of.get(a) for a in cmap.axes}
        owner = owners.pop() if len(owners) == 1 else None
        if owner is None:
            return builder.unknown(node, [x], "the reshape separates axes that carry channels")
        by_group[owner].append(cmap)
    maps = []
    for g, found in by_group.items():
        ins, outs = groups[g]
        if len(found) > 1:
            return builder.unknown(node, [x], "the reshape merges independent channel axes")
        full = np.ascontiguousarray(builder.broadcast(found[0], ins, x.shape))
        ids = full.reshape([out_shape[j] for j in outs])
        simplified = ChannelMap(tuple(outs), ids).simplified()
        if simplified is not None:
            maps.append(simplified)
    if sizes is not None and len(sizes) == len(out_shape):
        for axis, size in enumerate(sizes):
            if isinstance(size, int) and not isinstance(size, bool) and size != -1:
                sized = next((m for m in maps if axis in m.axes), None)
                if sized is not None:
                    builder.constant(node, size, sized, axis)
    return TensorInfo(out_shape, maps)


def _reshape(builder: GraphBuilder, node: fx.Node, args: list[Any], kwargs: dict[str, Any],
             out_shape: Any) -> Any:
    x = args[0]
    if not isinstance(x, TensorInfo):
        return plain_value(out_shape)
    sizes = None
    name = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", "")
    if name in ("view", "reshape"):
        rest = node.args[1:] if node.op == "call_method" else node.args[1:2]
        if "shape" in node.kwargs or "size" in node.kwargs:
            rest = (node.kwargs.get("shape", node.kwargs.get("size")),)
        sizes = list(rest[0]) if len(rest) == 1 and isinstance(rest[0], (list, tuple)) \
            else list(rest)
    elif name == "unflatten":
        dim = args[1] % x.ndim
        written: Any = node.args[2]  # the sizes as the code gave them
        given = list(written)
        sizes = [None] * dim + given + [None] * (len(out_shape) - dim - len(given))
    return reshape_rule(builder, node, x, out_shape, sizes)


def _permute(builder: GraphBuilder, node: fx.Node, args: list[Any], kwargs: dict[str, Any],
             out_shape: Any) -> Any:
    x = args[0]
    if not isinstance(x, TensorInfo):
        return plain_value(out_shape)
    nd = x.ndim
    name = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", "")
    if name == "permute":
        dims = args[1:] if node.op == "call_method" and not isinstance(args[1], (list, tuple)) \
            else args[1]
        order = [d % nd for d in dims]
    else:
        if name == "t":
            a, b = 0, min(1, nd - 1)
        else:
            a, b = args[1] % nd, args[2] % nd
        order = list(range(nd))
        order[a], order[b] = order[b], order[a]
    mapping = {old: new for new, old in enumerate(order)}
    maps = [m.moved(mapping) for m in x.maps]
    param = None
    if x.param is not None:
        param = ParamRef(x.param.module, x.param.name, tuple(x.param.axes[o] for o in order))
    return TensorInfo(out_shape, maps, param)


def _expand(builder: GraphBuilder, node: fx.Node, args: list[Any], kwargs: dict[str, Any],
            out_shape: Any) -> Any:
    x = args[0]
    offset = len(out_shape) - x.ndim
    maps = [m.moved({a: a + offset for a in m.axes}) for m in x.maps]
    param = None
    if x.param is not None:
        param = ParamRef(x.param.module, x.param.name, (None,) * offset + x.param.axes)
    return TensorInfo(out_shape, maps, param)


def _repeat(builder: GraphBuilder, node: fx.Node, args: list[Any], kwargs: dict[str, Any],
            out_shape: Any) -> Any:
    x = args[0]
    offset = len(out_shape) - x.ndim
    if any(out_shape[a + offset] != x.shape[a] for m in x.maps for a in m.axes):
        return builder.unknown(node, [x], "it repeats a channel axis")
    return _expand(builder, node, args, kwargs, out_shape)


# --- concat, stack, split -------------------------------------------------------------------------
def _cat(builder: GraphBuilder, node: fx.Node, args: list[Any], kwargs: dict[str, Any],
         out_shape: Any) -> Any:
    tensors = [t for t in (args[0] if args else kwargs.get("tensors", [])) if t is not None]
    if not all(isinstance(t, TensorInfo) for t in tensors):
        return builder.unknown(node, tensors)
    nd = len(out_shape)
    dim = _dim_arg(args, kwargs, 1, 0) % nd
    if any(m.axes != (dim,) for t in tensors for m in t.maps if dim in m.axes):
        return builder.unknown(node, tensors, "channels laid over several axes are concatenated")
    others = [m for t in tensors for m in t.maps if dim not in m.axes]
    merged = builder.merge(others, out_shape)
    for t in tensors:
        merged = builder.bind_fixed(t, {a: a for a in range(nd) if a != dim}, merged, node)
    if any(t.map_on(dim) is not None for t in tensors):
        pieces = []
        for t in tensors:
            cmap = t.map_on(dim)
            pieces.append(cmap.ids if cmap is not None else builder.fixed(
                t.shape[dim], node_module(node), "concatenated with fixed channels"))
        merged.append(ChannelMap((dim,), np.concatenate(pieces)))
    return TensorInfo(out_shape, merged)


def _stack(builder: GraphBuilder, node: fx.Node, args: list[Any], kwargs: dict[str, Any],
           out_shape: Any) -> Any:
    tensors = list(args[0] if args else kwargs.get("tensors", []))
    if not tensors or not all(isinstance(t, TensorInfo) for t in tensors):
        return builder.unknown(node, tensors)
    shape = tensors[0].shape
    dim = _dim_arg(args, kwargs, 1, 0) % len(out_shape)
    merged = builder.merge([m for t in tensors for m in t.maps], shape)
    for t in tensors:
        merged = builder.bind_fixed(t, {a: a for a in range(len(shape))}, merged, node)
    mapping = {a: a + (a >= dim) for a in range(len(shape))}
    return TensorInfo(out_shape, [m.moved(mapping) for m in merged])


def _split(builder: GraphBuilder, node: fx.Node, args: list[Any], kwargs: dict[str, Any],
           out_shape: Any) -> Any:
    x = args[0]
    if not isinstance(x, TensorInfo) or not isinstance(out_shape, list):
        return builder.unknown(node, args)
    dim = _dim_arg(args, kwargs, 2, 0) % x.ndim
    others = [m for m in x.maps if dim not in m.axes]
    cmap = x.map_on(dim)
    if cmap is None:
        return [TensorInfo(s, list(others)) for s in out_shape]
    if cmap.axes != (dim,):
        return builder.unknown(node, [x], "it splits channels laid over several axes")
    sizes = [s[dim] for s in out_shape]
    bounds = np.cumsum([0, *sizes])
    pieces = [cmap.ids[bounds[k]:bounds[k + 1]] for k in range(len(sizes))]
    name = node.target if isinstance(node.target, str) else node.target.__name__
    equal = len(set(sizes)) == 1
    if equal:  # each piece keeps the same channels, so the pieces stay equal
        for piece in pieces[1:]:
            builder.space.unite(piece, pieces[0])
    elif name == "chunk":
        builder.space.freeze(cmap.ids, "torch.chunk of unequal pieces")
    if name == "split":
        given: Any = node.args[1] if len(node.args) > 1 \
            else node.kwargs.get("split_size_or_sections")
        constants = [given] * len(sizes) if isinstance(given, int) else list(given or [])
        for k, size in enumerate(constants[:len(sizes)]):
            if isinstance(size, int):
                builder.constant(node, size, ChannelMap((dim,), pieces[k]), dim)
    return [TensorInfo(s, [*others, ChannelMap((dim,), p)])
            for s, p in zip(out_shape, pieces, strict=True)]


def _unbind(builder: GraphBuilder, node: fx.Node, args: list[Any], kwargs: dict[str, Any],
            out_shape: Any) -> Any:
    x = args[0]
    if not isinstance(x, TensorInfo) or not isinstance(out_shape, list):
        return builder.unknown(node, args)
    dim = _dim_arg(args, kwargs, 1, 0) % x.ndim
    mapping = {a: a - (a > dim) for a in range(x.ndim) if a != dim}
    outputs = []
    for k, shape in enumerate(out_shape):
        maps = []
        for cmap in x.maps:
            if dim not in cmap.axes:
                maps.append(cmap.moved(mapping))
                continue
            if cmap.axes == (dim,):
                builder.space.freeze(cmap.ids, "unbound along its channel axis")
                continue
            position = cmap.axes.index(dim)
            rest = tuple(a for a in cmap.axes if a != dim)
            maps.append(ChannelMap(rest, np.take(cmap.ids, k, axis=position)).moved(mapping))
        outputs.append(TensorInfo(shape, maps))
    return outputs


def _getitem(builder: GraphBuilder, node: fx.Node, args: list[Any], kwargs: dict[str, Any],
             out_shape: Any) -> Any:
    x, index = args[0], node.args[1]
    items: list[Any] = list(index) if isinstance(index, tuple) else [index]
    if any(isinstance(i, (fx.Node, list, torch.Tensor)) for i in items):
        if x.maps:
            return builder.unknown(node, [x], "advanced indexing")
        return plain_value(out_shape)
    real = sum(1 for i in items if i is not None and i is not Ellipsis)
    mapping: dict[int, int | None] = {}
    selected: dict[int, int] = {}
    sliced: dict[int, slice] = {}
    in_axis = out_axis = 0
    for item in items:
        if item is None:
            out_axis += 1
        elif item is Ellipsis:
            for _ in range(x.ndim - real):
                mapping[in_axis] = out_axis
                in_axis, out_axis = in_axis + 1, out_axis + 1
        elif isinstance(item, int):
            mapping[in_axis] = None
            selected[in_axis] = item
            in_axis += 1
        else:
            mapping[in_axis] = out_axis
            sliced[in_axis] = item
            in_axis, out_axis = in_axis + 1, out_axis + 1
    while in_axis < x.ndim:
        mapping[in_axis] = out_axis
        in_axis, out_axis = in_axis + 1, out_axis + 1
    maps = []
    for cmap in x.maps:
        ids, axes = cmap.ids, list(cmap.axes)
        touched = [a for a in axes if a in selected
                   or (a in sliced and sliced[a] != slice(None))]
        if touched:  # positions picked by constant indices: those channels must stay
            builder.space.freeze(cmap.ids, f"indexed with constants at node {node.name}")
        for a in list(axes):
            position = axes.index(a)
            if a in selected:
                ids = np.take(ids, selected[a], axis=position)
                axes.pop(position)
            elif a in sliced:
                ids = np.take(ids, np.arange(x.shape[a])[sliced[a]], axis=position)
        if axes:
            kept = {a: out for a in axes if (out := mapping[a]) is not None}  # all of them
            new = ChannelMap(tuple(axes), ids).moved(kept)
            maps.append(new)
    return TensorInfo(out_shape, [m for m in (c.simplified() for c in maps) if m is not None])


# --- contractions and reductions ------------------------------------------------------------------
def matmul_info(builder: GraphBuilder, node: fx.Node, a: TensorInfo, b: TensorInfo,
                out_shape: tuple[int, ...]) -> TensorInfo:
    """``a @ b``: the contracted axis couples; batch axes (attention heads) follow the
    ``attention`` option."""
    if a.ndim < 2 or b.ndim < 2:
        if a.maps or b.maps:
            return builder.unknown(node, [a, b], "a vector matmul")
        return TensorInfo(out_shape)
    nd = len(out_shape)
    contracted = nd  # a virtual axis after the output's axes
    ext = (*out_shape, a.shape[-1])

    def axes_of(t: TensorInfo, left: bool) -> dict[int, int]:
        batch = t.ndim - 2
        mapping = {i: i + nd - 2 - batch for i in range(batch)}
        mapping[t.ndim - 2] = nd - 2 if left else contracted
        mapping[t.ndim - 1] = contracted if left else nd - 1
        return mapping

    map_a, map_b = axes_of(a, True), axes_of(b, False)
    placed = [m.moved(map_a) for m in a.maps] + [m.moved(map_b) for m in b.maps]
    merged = builder.merge(placed, ext)
    for t, mapping in ((a, map_a), (b, map_b)):
        merged = builder.bind_fixed(t, {v: k for k, v in mapping.items()}, merged, node,
                                    role="in")
    maps = []
    for cmap in merged:
        if contracted in cmap.axes:
            batch = [x for x in cmap.axes if x < nd - 2]
            if batch:
                tie_axes = [contracted] if builder.options.attention == "heads" else batch
                tied = builder.tie(cmap, tie_axes)
                if tied is None:
                    continue
                cmap = tied
            collapsed = builder.collapse(cmap, [contracted])
            if collapsed is None:
                continue
            cmap = collapsed
        maps.append(cmap)
    return TensorInfo(out_shape, maps)


def _matmul(builder: GraphBuilder, node: fx.Node, args: list[Any], kwargs: dict[str, Any],
            out_shape: Any) -> Any:
    a, b = args[0], args[1] if len(args) > 1 else kwargs.get("other", kwargs.get("mat2"))
    if not (isinstance(a, TensorInfo) and isinstance(b, TensorInfo)):
        return builder.unknown(node, args)
    return matmul_info(builder, node, a, b, out_shape)


def _sdpa(builder: GraphBuilder, node: fx.Node, args: list[Any], kwargs: dict[str, Any],
          out_shape: Any) -> Any:
    names = ("query", "key", "value")
    q, k, v = (args[i] if i < len(args) else kwargs.get(n) for i, n in enumerate(names))
    if not (isinstance(q, TensorInfo) and isinstance(k, TensorInfo)
            and isinstance(v, TensorInfo)):
        return builder.unknown(node, args)
    swap = {k.ndim - 1: k.ndim - 2, k.ndim - 2: k.ndim - 1}
    k_t = TensorInfo((*k.shape[:-2], k.shape[-1], k.shape[-2]),
                     [m.moved({a: swap.get(a, a) for a in m.axes}) for m in k.maps])
    scores = matmul_info(builder, node, q, k_t, (*out_shape[:-1], k.shape[-2]))
    return matmul_info(builder, node, scores, v, out_shape)


def _reduce(builder: GraphBuilder, node: fx.Node, args: list[Any], kwargs: dict[str, Any],
            out_shape: Any) -> Any:
    x = args[0]
    if not isinstance(x, TensorInfo):
        return plain_value(out_shape)
    dim = _dim_arg(args, kwargs, 1, None)
    keepdim = bool(kwargs.get("keepdim", args[2] if len(args) > 2 else False))
    dims = list(range(x.ndim)) if dim is None else \
        [d % x.ndim for d in (dim if isinstance(dim, (list, tuple)) else [dim])]
    maps = [c for c in (builder.collapse(m, dims) for m in x.maps) if c is not None]
    if not keepdim:
        mapping = {a: a - sum(d < a for d in dims) for a in range(x.ndim) if a not in dims}
        maps = [m.moved(mapping) for m in maps]
    if isinstance(out_shape, list):  # (values, indices)
        return [TensorInfo(s, list(maps)) for s in out_shape]
    return TensorInfo(out_shape, maps)


def _reduce_or_binary(builder: GraphBuilder, node: fx.Node, args: list[Any],
                      kwargs: dict[str, Any], out_shape: Any) -> Any:
    if len(args) > 1 and isinstance(args[1], TensorInfo):  # torch.max(a, b)
        return _elementwise(builder, node, args, kwargs, out_shape)
    return _reduce(builder, node, args, kwargs, out_shape)


FUNCTION_RULES: list[tuple[set[Any], FunctionRule]] = [
    (ELEMENTWISE, _elementwise), (UNARY, _passthrough), (RESHAPES, _reshape),
    (PERMUTES, _permute), (REDUCTIONS, _reduce_or_binary), (MATMULS, _matmul),
    (CONCATS, _cat), ({torch.stack}, _stack), (SPLITS, _split), (UNBINDS, _unbind),
    (EXPANDS, _expand), (REPEATS, _repeat), ({operator.getitem}, _getitem),
    ({F.scaled_dot_product_attention}, _sdpa),
]
"""The built-in function rules: each set of functions / method names and its rule."""


def function_table() -> dict[Any, FunctionRule]:
    """:data:`FUNCTION_RULES` as one lookup table, target -> rule.

    Example:
        >>> function_table()[torch.cat].__name__
        '_cat'
    """
    return {target: rule for targets, rule in FUNCTION_RULES for target in targets}
