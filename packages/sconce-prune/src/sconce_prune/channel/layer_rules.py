"""How channels flow through each kind of layer (``call_module`` nodes).

A rule reads its input's channel maps, records slots (which of the layer's tensors hold
which channels) and count attributes, and returns its output's maps. Layers that create
channels (conv, linear, embedding) make fresh variables; norms and activations pass them
through; grouped convs tie the channels of their groups; attention couples its projections
and its heads.

Example:
    >>> from torch import nn
    >>> module_rule.__name__, isinstance(nn.ReLU(), PASSTHROUGH_LAYERS)
    ('module_rule', True)
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from torch import fx, nn

from sconce_prune.channel.graph import GraphBuilder, HeadLayout
from sconce_prune.channel.ids import ChannelMap, TensorInfo
from sconce_prune.channel.tracing import node_shape

logger = logging.getLogger(__name__)

PASSTHROUGH_LAYERS: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Sigmoid, nn.Tanh, nn.Softplus, nn.Softsign,
    nn.Tanhshrink, nn.Threshold, nn.LogSigmoid, nn.Softmax, nn.Softmin, nn.LogSoftmax,
    nn.Softmax2d, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
    nn.Identity, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d,
    nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, nn.LPPool1d,
    nn.LPPool2d, nn.Upsample, nn.UpsamplingNearest2d, nn.UpsamplingBilinear2d,
    nn.ZeroPad1d, nn.ZeroPad2d, nn.ZeroPad3d, nn.ConstantPad1d, nn.ConstantPad2d,
    nn.ConstantPad3d, nn.ReflectionPad1d, nn.ReflectionPad2d, nn.ReflectionPad3d,
    nn.ReplicationPad1d, nn.ReplicationPad2d, nn.ReplicationPad3d,
)
"""Layers that keep every channel where it is (sizes along channel axes unchanged)."""

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
         nn.ConvTranspose3d)
_BATCH_NORM = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm,
               nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)
_LAST_DIM_NORM = (nn.LayerNorm, nn.RMSNorm)


def module_rule(builder: GraphBuilder, node: fx.Node, module: nn.Module) -> Any:
    """Dispatch a ``call_module`` node to the rule for its layer type."""
    name = str(node.target)
    args = [builder.arg(a) for a in node.args]
    kwargs = {k: builder.arg(v) for k, v in node.kwargs.items()}
    x = args[0] if args else next(iter(kwargs.values()), None)
    out_shape = node_shape(node)
    if isinstance(module, nn.MultiheadAttention):
        return _attention(builder, node, name, module, args, kwargs, out_shape)
    if not isinstance(x, TensorInfo):
        return builder.unknown(node, args, "its input is not a single tensor")
    if isinstance(module, _CONV):
        return _conv(builder, node, name, module, x, out_shape)
    if isinstance(module, nn.Linear):
        return _linear(builder, node, name, module, x, out_shape)
    if isinstance(module, _BATCH_NORM):
        return _batch_norm(builder, node, name, module, x)
    if isinstance(module, nn.GroupNorm):
        return _group_norm(builder, node, name, module, x)
    if isinstance(module, _LAST_DIM_NORM):
        return _last_dim_norm(builder, node, name, module, x)
    if isinstance(module, nn.PReLU):
        return _prelu(builder, node, name, module, x)
    if isinstance(module, nn.Embedding):
        return _embedding(builder, name, module, out_shape)
    if isinstance(module, (nn.Flatten, nn.Unflatten)):
        from sconce_prune.channel.op_rules import reshape_rule

        return reshape_rule(builder, node, x, out_shape, sizes=None)
    if isinstance(module, PASSTHROUGH_LAYERS):
        return passthrough(builder, node, x, out_shape)
    return builder.unknown(node, args, f"{type(module).__name__} is not a supported layer")


def passthrough(builder: GraphBuilder, node: fx.Node, x: TensorInfo, out_shape: Any) -> Any:
    """Channels stay where they are (activations, pools, dropout, padding)."""
    if not isinstance(out_shape, tuple):
        if isinstance(out_shape, list):  # e.g. pools returning (values, indices)
            return [passthrough(builder, node, x, s) for s in out_shape]
        return builder.unknown(node, [x])
    if len(out_shape) != x.ndim or any(out_shape[a] != x.shape[a]
                                       for m in x.maps for a in m.axes):
        return builder.unknown(node, [x], "it changes the size of a channel axis")
    return TensorInfo(out_shape, list(x.maps))


def _channel_map(builder: GraphBuilder, node: fx.Node, x: TensorInfo, axis: int,
                 what: str) -> tuple[np.ndarray | None, list[ChannelMap]]:
    """The ids on ``axis`` and the other maps; a map mixing ``axis`` with others is frozen."""
    ids, others = None, []
    for cmap in x.maps:
        if cmap.axes == (axis,):
            ids = cmap.ids
        elif axis in cmap.axes:
            builder.space.freeze(cmap.ids, f"{what} sees channels laid over several axes")
        else:
            others.append(cmap)
    return ids, others


def _conv(builder: GraphBuilder, node: fx.Node, name: str, conv: nn.Module, x: TensorInfo,
          out_shape: tuple[int, ...]) -> TensorInfo:
    spatial = len(conv.kernel_size)  # type: ignore[arg-type]
    axis = x.ndim - spatial - 1
    in_ids, others = _channel_map(builder, node, x, axis, name)
    for cmap in others:  # spatial positions are mixed by the kernel
        builder.space.freeze(cmap.ids, f"a spatial axis of {name}")
    transposed = bool(conv.transposed)  # type: ignore[attr-defined]
    groups = int(conv.groups)  # type: ignore[arg-type]
    c_in, c_out = int(conv.in_channels), int(conv.out_channels)  # type: ignore[arg-type]
    w_in, w_out = (0, 1) if transposed else (1, 0)
    if groups == 1:
        out_ids = builder.fresh(c_out, name)
        builder.slot(name, "weight", w_out, out_ids, "out")
        if in_ids is not None:
            builder.slot(name, "weight", w_in, in_ids, "in")
    elif c_in == groups:  # depthwise: output channel o reads input channel o // multiplier
        if in_ids is None:
            in_ids = builder.fixed(c_in, name, f"the input of depthwise {name} is fixed")
        out_ids = np.repeat(in_ids, c_out // groups)
        if builder.is_ignored(name):
            builder.space.freeze(out_ids, f"{name!r} is in ignored_layers")
        builder.slot(name, "weight", 0, out_ids if not transposed else in_ids, "out")
        builder.count(name, "groups", in_ids)
    else:  # grouped: the same local channels are removed from every group
        block_in, block_out = c_in // groups, c_out // groups
        if in_ids is None:
            in_ids = builder.fixed(c_in, name, f"the input of grouped {name} is fixed")
        for g in range(1, groups):
            builder.space.unite(in_ids[g * block_in:(g + 1) * block_in], in_ids[:block_in])
        out_ids = builder.fresh(c_out, name)
        for g in range(1, groups):
            builder.space.unite(out_ids[g * block_out:(g + 1) * block_out],
                                out_ids[:block_out])
        if transposed:
            builder.slot(name, "weight", 0, in_ids, "in")
            builder.slot(name, "weight", 1, out_ids[:block_out], "out")
        else:
            builder.slot(name, "weight", 0, out_ids, "out")
            builder.slot(name, "weight", 1, in_ids[:block_in], "in")
    if conv.bias is not None:  # type: ignore[attr-defined]
        builder.slot(name, "bias", 0, out_ids, "out")
    if in_ids is not None:
        builder.count(name, "in_channels", in_ids)
    builder.count(name, "out_channels", out_ids)
    return TensorInfo(out_shape, [ChannelMap((axis,), out_ids)])


def _linear(builder: GraphBuilder, node: fx.Node, name: str, linear: nn.Linear,
            x: TensorInfo, out_shape: tuple[int, ...]) -> TensorInfo:
    last = x.ndim - 1
    in_ids, others = _channel_map(builder, node, x, last, name)
    out_ids = builder.fresh(linear.out_features, name)
    builder.slot(name, "weight", 0, out_ids, "out")
    if linear.bias is not None:
        builder.slot(name, "bias", 0, out_ids, "out")
    if in_ids is not None:
        builder.slot(name, "weight", 1, in_ids, "in")
        builder.count(name, "in_features", in_ids)
    builder.count(name, "out_features", out_ids)
    return TensorInfo(out_shape, [*others, ChannelMap((last,), out_ids)])


def _batch_norm(builder: GraphBuilder, node: fx.Node, name: str, norm: nn.Module,
                x: TensorInfo) -> TensorInfo:
    axis = 1 if x.ndim > 1 else 0
    no_batch = getattr(norm, "_get_no_batch_dim", None)
    if no_batch is not None and x.ndim == no_batch():  # an unbatched instance norm input
        axis = 0
    ids, others = _channel_map(builder, node, x, axis, name)
    if ids is not None:
        for tensor in ("weight", "bias", "running_mean", "running_var"):
            if getattr(norm, tensor, None) is not None:
                builder.slot(name, tensor, 0, ids, "out")
        builder.count(name, "num_features", ids)
        others = [*others, ChannelMap((axis,), ids)]
    return TensorInfo(x.shape, others)


def _group_norm(builder: GraphBuilder, node: fx.Node, name: str, norm: nn.GroupNorm,
                x: TensorInfo) -> TensorInfo:
    ids, others = _channel_map(builder, node, x, 1, name)
    if ids is not None:
        block = norm.num_channels // norm.num_groups
        for g in range(1, norm.num_groups):  # every group keeps the same local channels
            builder.space.unite(ids[g * block:(g + 1) * block], ids[:block])
        if norm.affine:
            builder.slot(name, "weight", 0, ids, "out")
            builder.slot(name, "bias", 0, ids, "out")
        builder.count(name, "num_channels", ids)
        others = [*others, ChannelMap((1,), ids)]
    return TensorInfo(x.shape, others)


def _last_dim_norm(builder: GraphBuilder, node: fx.Node, name: str, norm: nn.Module,
                   x: TensorInfo) -> TensorInfo:
    normalized = tuple(norm.normalized_shape)  # type: ignore[arg-type]
    first = x.ndim - len(normalized)
    maps = []
    for cmap in x.maps:
        inside = [a for a in cmap.axes if a >= first]
        if not inside:
            maps.append(cmap)
            continue
        if len(cmap.axes) != 1:
            builder.space.freeze(cmap.ids, f"{name} normalises channels laid over several axes")
            maps.append(cmap)
            continue
        dim = cmap.axes[0] - first
        for tensor in ("weight", "bias"):
            if getattr(norm, tensor, None) is not None:
                builder.slot(name, tensor, dim, cmap.ids, "out")
        builder.count(name, "normalized_shape", cmap.ids, index=dim)
        maps.append(cmap)
    return TensorInfo(x.shape, maps)


def _prelu(builder: GraphBuilder, node: fx.Node, name: str, prelu: nn.PReLU,
           x: TensorInfo) -> TensorInfo:
    if prelu.num_parameters == 1:
        return TensorInfo(x.shape, list(x.maps))
    axis = 1 if x.ndim > 1 else 0
    ids, others = _channel_map(builder, node, x, axis, name)
    if ids is not None:
        builder.slot(name, "weight", 0, ids, "out")
        builder.count(name, "num_parameters", ids)
        others = [*others, ChannelMap((axis,), ids)]
    return TensorInfo(x.shape, others)


def _embedding(builder: GraphBuilder, name: str, embedding: nn.Embedding,
               out_shape: tuple[int, ...]) -> TensorInfo:
    ids = builder.fresh(embedding.embedding_dim, name)
    builder.slot(name, "weight", 1, ids, "out")
    builder.count(name, "embedding_dim", ids)
    return TensorInfo(out_shape, [ChannelMap((len(out_shape) - 1,), ids)])


def _attention(builder: GraphBuilder, node: fx.Node, name: str, attn: nn.MultiheadAttention,
               args: list[Any], kwargs: dict[str, Any], out_shape: Any) -> Any:
    """nn.MultiheadAttention: one ``embed_dim`` for the query input, the projections and
    the output, so they share channel variables; heads are removed whole (``heads``) or
    lose the same dims each (``dims``)."""
    names = ("query", "key", "value")
    inputs = [args[i] if i < len(args) else kwargs.get(n) for i, n in enumerate(names)]
    if not all(isinstance(v, TensorInfo) for v in inputs):
        return builder.unknown(node, args, "query, key and value must be tensors")
    query, key, value = inputs
    embed, heads = attn.embed_dim, attn.num_heads
    internal, _ = _channel_map(builder, node, query, query.ndim - 1, name)
    if internal is None:
        internal = builder.fixed(embed, name, f"the query input of {name} is fixed")
    for tensor, other in (("k", key), ("v", value)):
        other_ids, _ = _channel_map(builder, node, other, other.ndim - 1, name)
        if attn._qkv_same_embed_dim:
            if other_ids is not None:
                builder.space.unite(internal, other_ids)
            else:
                builder.space.freeze(internal, f"the {tensor} input of {name} is fixed")
        elif other_ids is not None:
            builder.slot(name, f"{tensor}_proj_weight", 1, other_ids, "in")
            builder.count(name, "kdim" if tensor == "k" else "vdim", other_ids)
    layout = internal.reshape(heads, embed // heads)
    for h in range(heads):
        if builder.options.attention == "heads":
            builder.space.unite_all(layout[h])
        elif h:
            builder.space.unite(layout[h], layout[0])
    if builder.is_ignored(name):
        builder.space.freeze(internal, f"{name!r} is in ignored_layers")
    builder.heads.append(HeadLayout(name, layout))
    triple = np.concatenate([internal] * 3)
    if attn._qkv_same_embed_dim:
        builder.slot(name, "in_proj_weight", 0, triple, "out")
        builder.slot(name, "in_proj_weight", 1, internal, "in")
        builder.count(name, "kdim", internal)
        builder.count(name, "vdim", internal)
    else:
        for tensor in ("q_proj_weight", "k_proj_weight", "v_proj_weight"):
            builder.slot(name, tensor, 0, internal, "out")
        builder.slot(name, "q_proj_weight", 1, internal, "in")
    if attn.in_proj_bias is not None:
        builder.slot(name, "in_proj_bias", 0, triple, "out")
    for tensor in ("bias_k", "bias_v"):
        if getattr(attn, tensor, None) is not None:
            builder.slot(name, tensor, 2, internal, "out")
    builder.slot(f"{name}.out_proj", "weight", 0, internal, "out")
    builder.slot(f"{name}.out_proj", "weight", 1, internal, "in")
    if attn.out_proj.bias is not None:
        builder.slot(f"{name}.out_proj", "bias", 0, internal, "out")
    builder.count(name, "embed_dim", internal)
    builder.count(f"{name}.out_proj", "in_features", internal)
    builder.count(f"{name}.out_proj", "out_features", internal)
    shapes = out_shape if isinstance(out_shape, list) else [out_shape, None]
    first = shapes[0]
    output = TensorInfo(first, [ChannelMap((len(first) - 1,), internal)])
    weights = TensorInfo(shapes[1]) if isinstance(shapes[1], tuple) else None
    return [output, weights]
