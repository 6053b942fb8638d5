"""How channels flow through each kind of layer (``call_module`` nodes).

A rule reads its input's channel maps, records slots (which of the layer's tensors hold
which channels) and count attributes, and returns its output's maps. Layers that create
channels (conv, linear, embedding) make fresh variables; norms and activations pass them
through; grouped convs tie the channels of their groups; attention couples its projections
and its heads.

A rule is ``rule(builder, call)`` (:data:`~sconce_prune.channel.builder.LayerRule`);
:data:`LAYER_RULES` maps each torch layer type to its rule, and :func:`channelwise_rule` /
:func:`mixing_rule` turn a description of a layer type (``sconce.ChannelwiseLayer``,
:class:`ChannelMixingLayer`) into a rule.

Example:
    >>> from torch import nn
    >>> LAYER_RULES[nn.Conv2d].__name__, nn.ReLU in LAYER_RULES
    ('_conv', True)
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import torch
from torch import fx, nn

from sconce.errors import ConfigError, TechniqueError
from sconce.layers import ChannelwiseLayer
from sconce_prune.channel.builder import GraphBuilder, LayerCall, LayerRule
from sconce_prune.channel.ids import ChannelMap, TensorInfo
from sconce_prune.channel.op_rules import reshape_rule
from sconce_prune.channel.structure import HeadLayout

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


def _single_input(body: Callable[[GraphBuilder, LayerCall, TensorInfo], Any]) -> LayerRule:
    """A layer rule for layers that read one tensor: ``body(builder, call, x)``."""

    @functools.wraps(body)
    def rule(builder: GraphBuilder, call: LayerCall) -> Any:
        x = call.input
        if not isinstance(x, TensorInfo):
            return builder.unknown(call.node, call.args, "its input is not a single tensor")
        return body(builder, call, x)

    return rule


@_single_input
def passthrough(builder: GraphBuilder, call: LayerCall, x: TensorInfo) -> Any:
    """Channels stay where they are (activations, pools, dropout, padding)."""
    return _passthrough(builder, call.node, x, call.out_shape)


def _passthrough(builder: GraphBuilder, node: fx.Node, x: TensorInfo, out_shape: Any) -> Any:
    if not isinstance(out_shape, tuple):
        if isinstance(out_shape, list):  # e.g. pools returning (values, indices)
            return [_passthrough(builder, node, x, s) for s in out_shape]
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


@_single_input
def _conv(builder: GraphBuilder, call: LayerCall, x: TensorInfo) -> TensorInfo:
    node, name, conv = call.node, call.name, call.module
    spatial = len(conv.kernel_size)  # type: ignore[arg-type]
    axis = x.ndim - spatial - 1
    in_ids, others = _channel_map(builder, node, x, axis, name)
    for cmap in others:  # spatial positions are mixed by the kernel
        builder.space.freeze(cmap.ids, f"a spatial axis of {name}")
    transposed = bool(conv.transposed)
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
    if conv.bias is not None:
        builder.slot(name, "bias", 0, out_ids, "out")
    if in_ids is not None:
        builder.count(name, "in_channels", in_ids)
    builder.count(name, "out_channels", out_ids)
    return TensorInfo(call.out_shape, [ChannelMap((axis,), out_ids)])


@_single_input
def _linear(builder: GraphBuilder, call: LayerCall, x: TensorInfo) -> TensorInfo:
    node, name, linear = call.node, call.name, cast(nn.Linear, call.module)
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
    return TensorInfo(call.out_shape, [*others, ChannelMap((last,), out_ids)])


@_single_input
def _batch_norm(builder: GraphBuilder, call: LayerCall, x: TensorInfo) -> TensorInfo:
    node, name, norm = call.node, call.name, call.module
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


@_single_input
def _group_norm(builder: GraphBuilder, call: LayerCall, x: TensorInfo) -> TensorInfo:
    node, name, norm = call.node, call.name, cast(nn.GroupNorm, call.module)
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


@_single_input
def _last_dim_norm(builder: GraphBuilder, call: LayerCall, x: TensorInfo) -> TensorInfo:
    name, norm = call.name, call.module
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


@_single_input
def _prelu(builder: GraphBuilder, call: LayerCall, x: TensorInfo) -> TensorInfo:
    node, name, prelu = call.node, call.name, cast(nn.PReLU, call.module)
    if prelu.num_parameters == 1:
        return TensorInfo(x.shape, list(x.maps))
    axis = 1 if x.ndim > 1 else 0
    ids, others = _channel_map(builder, node, x, axis, name)
    if ids is not None:
        builder.slot(name, "weight", 0, ids, "out")
        builder.count(name, "num_parameters", ids)
        others = [*others, ChannelMap((axis,), ids)]
    return TensorInfo(x.shape, others)


@_single_input
def _embedding(builder: GraphBuilder, call: LayerCall, x: TensorInfo) -> TensorInfo:
    name, out_shape = call.name, call.out_shape
    embedding = cast(nn.Embedding, call.module)
    ids = builder.fresh(embedding.embedding_dim, name)
    builder.slot(name, "weight", 1, ids, "out")
    builder.count(name, "embedding_dim", ids)
    return TensorInfo(out_shape, [ChannelMap((len(out_shape) - 1,), ids)])


def _attention(builder: GraphBuilder, call: LayerCall) -> Any:
    """nn.MultiheadAttention: one ``embed_dim`` for the query input, the projections and
    the output, so they share channel variables; heads are removed whole (``heads``) or
    lose the same dims each (``dims``)."""
    node, name, attn = call.node, call.name, cast(nn.MultiheadAttention, call.module)
    args, kwargs, out_shape = call.args, call.kwargs, call.out_shape
    names = ("query", "key", "value")
    given = [args[i] if i < len(args) else kwargs.get(n) for i, n in enumerate(names)]
    inputs = [v for v in given if isinstance(v, TensorInfo)]
    if len(inputs) != len(names):
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


@_single_input
def _flatten(builder: GraphBuilder, call: LayerCall, x: TensorInfo) -> Any:
    return reshape_rule(builder, call.node, x, call.out_shape, sizes=None)


LAYER_RULES: dict[type[nn.Module], LayerRule] = {
    **dict.fromkeys(_CONV, _conv), nn.Linear: _linear, **dict.fromkeys(_BATCH_NORM, _batch_norm),
    nn.GroupNorm: _group_norm, **dict.fromkeys(_LAST_DIM_NORM, _last_dim_norm),
    nn.PReLU: _prelu, nn.Embedding: _embedding, nn.MultiheadAttention: _attention,
    nn.Flatten: _flatten, nn.Unflatten: _flatten, **dict.fromkeys(PASSTHROUGH_LAYERS, passthrough),
}
"""The built-in layer rules, by layer type (subclasses follow their nearest base)."""


@dataclass(frozen=True)
class ChannelMixingLayer:
    """Describes a layer that reads the channels of its input and makes new ones (a custom
    linear or convolution), for :func:`sconce_prune.channel.register_rule`.

    Attributes:
        produces: tensor name -> the dim holding one entry per output channel
            (``{"weight": 0, "bias": 0}``); the first one's size is the output width.
        consumes: tensor name -> the dim holding one entry per input channel
            (``{"weight": 1}``).
        out_count: attributes that count the output channels (``("out_features",)``).
        in_count: attributes that count the input channels (``("in_features",)``).
        channel_axis: the channel axis of the input and the output (-1: ``..., C``;
            1: ``N, C, ...``).

    Example:
        >>> ChannelMixingLayer(produces={"weight": 0}, consumes={"weight": 1}).channel_axis
        -1
    """

    produces: Mapping[str, int] = field(default_factory=lambda: {"weight": 0, "bias": 0})
    consumes: Mapping[str, int] = field(default_factory=lambda: {"weight": 1})
    out_count: tuple[str, ...] = ()
    in_count: tuple[str, ...] = ()
    channel_axis: int = -1

    def __post_init__(self) -> None:
        if not self.produces:
            raise ConfigError("ChannelMixingLayer needs at least one produced tensor, e.g. "
                              "produces={'weight': 0}")
        for field_name in ("out_count", "in_count"):
            value = getattr(self, field_name)
            if isinstance(value, str) or not all(isinstance(v, str) for v in value):
                raise ConfigError(f"ChannelMixingLayer.{field_name} must be a tuple of "
                                  f"attribute names, got {value!r}")


def _tensor_of(module: nn.Module, name: str) -> torch.Tensor | None:
    value = getattr(module, name, None)
    return value if isinstance(value, torch.Tensor) else None


def mixing_rule(spec: ChannelMixingLayer) -> LayerRule:
    """The layer rule a :class:`ChannelMixingLayer` describes.

    Example:
        >>> mixing_rule(ChannelMixingLayer()).__name__
        'mixing_layer'
    """

    @_single_input
    def mixing_layer(builder: GraphBuilder, call: LayerCall, x: TensorInfo) -> Any:
        name, module, out_shape = call.name, call.module, call.out_shape
        axis = spec.channel_axis % x.ndim
        produced = {t: d for t, d in spec.produces.items() if _tensor_of(module, t) is not None}
        if not produced:
            return builder.unknown(call.node, [x], f"{name} has none of the tensors "
                                   f"{sorted(spec.produces)} its rule names")
        first, dim = next(iter(produced.items()))
        width = int(_tensor_of(module, first).shape[dim])  # type: ignore[union-attr]
        if not isinstance(out_shape, tuple) or len(out_shape) != x.ndim \
                or out_shape[axis] != width:
            return builder.unknown(call.node, [x], f"its output does not have {width} channels "
                                   f"on axis {spec.channel_axis} as its rule says")
        in_ids, others = _channel_map(builder, call.node, x, axis, name)
        for cmap in others:  # other axes must keep their size to keep their channels
            if any(out_shape[a] != x.shape[a] for a in cmap.axes):
                builder.space.freeze(cmap.ids, f"an axis of {name} that changes size")
        out_ids = builder.fresh(width, name)
        for tensor, tensor_dim in produced.items():
            builder.slot(name, tensor, tensor_dim, out_ids, "out")
        for attr in spec.out_count:
            builder.count(name, attr, out_ids)
        if in_ids is not None:
            for tensor, tensor_dim in spec.consumes.items():
                value = _tensor_of(module, tensor)
                if value is None:
                    continue
                if value.shape[tensor_dim] != in_ids.size:
                    raise TechniqueError(
                        f"{name}.{tensor} has {value.shape[tensor_dim]} entries on dim "
                        f"{tensor_dim} but the layer reads {in_ids.size} channels; fix the "
                        "rule registered for " + type(module).__name__)
                builder.slot(name, tensor, tensor_dim, in_ids, "in")
            for attr in spec.in_count:
                builder.count(name, attr, in_ids)
        return TensorInfo(out_shape, [*others, ChannelMap((axis,), out_ids)])

    return mixing_layer


def channelwise_rule(spec: ChannelwiseLayer) -> LayerRule:
    """The layer rule a ``sconce.ChannelwiseLayer`` describes (spiking neurons, custom
    per-channel activations).

    The layer is a leaf: every tensor it returns carries the channels of its first input;
    its other tensor inputs (recurrent states) are tied to the same channels; its
    per-channel tensors are sliced with them. A state of fixed size (created in the code)
    freezes the channels it meets, so pruning never breaks it.

    Example:
        >>> import sconce
        >>> channelwise_rule(sconce.ChannelwiseLayer(per_channel=("beta",))).__name__
        'channelwise_layer'
    """

    def channelwise_layer(builder: GraphBuilder, call: LayerCall) -> Any:
        x, name, module = call.input, call.name, call.module
        if not isinstance(x, TensorInfo) or not x.ndim:
            return builder.unknown(call.node, call.args, "its first input is not a tensor")
        axis = spec.channel_axis % x.ndim
        ids = x.map_on(axis)
        channels = x.shape[axis]
        if ids is not None and ids.axes != (axis,):
            builder.space.freeze(ids.ids, f"{name} sees channels laid over several axes")
            ids = None
        states = [t for t in call.tensors if t is not x]
        for state in states:
            if state.ndim != x.ndim or state.shape[axis] != channels or channels <= 1:
                continue  # not per channel (an empty initial state, a scalar)
            state_ids = state.map_on(axis)
            if state_ids is not None and ids is not None and state_ids.axes == (axis,):
                builder.space.unite(state_ids.ids, ids.ids)
            elif state_ids is not None:
                builder.space.freeze(state_ids.ids, f"a state of {name} meets fixed channels")
            elif ids is not None:
                builder.space.freeze(ids.ids, f"a fixed-size state of {name}")
        if ids is not None:
            for tensor in spec.per_channel:
                owner, _, attr, value = _dotted(module, name, tensor)
                if value is None or value.numel() <= 1:
                    continue  # not there, or one value shared by every channel
                if value.shape[0] != channels:
                    builder.space.freeze(ids.ids, f"{name}.{tensor} has {value.shape[0]} "
                                                  f"entries for {channels} channels")
                    continue
                builder.slot(owner, attr, 0, ids.ids, "carried")
            for tensor in spec.recurrent:
                _recurrent_slots(builder, module, name, tensor, ids.ids, channels)
        return _carry(builder, call, x, axis)

    return channelwise_layer


def _dotted(module: nn.Module, name: str, path: str
            ) -> tuple[str, nn.Module, str, torch.Tensor | None]:
    """``(owner's qualified name, owner, attribute, tensor or None)`` of a dotted ``path``
    under ``module`` (named ``name`` in the model)."""
    owner_path, _, attr = path.rpartition(".")
    try:
        owner = module.get_submodule(owner_path) if owner_path else module
    except AttributeError:
        return name, module, path, None
    qualified = f"{name}.{owner_path}" if owner_path else name
    return qualified, owner, attr, _tensor_of(owner, attr)


_SIZE_ATTRS: dict[type[nn.Module], tuple[str, str]] = {
    nn.Linear: ("out_features", "in_features"), nn.Conv1d: ("out_channels", "in_channels"),
    nn.Conv2d: ("out_channels", "in_channels"), nn.Conv3d: ("out_channels", "in_channels")}


def _recurrent_slots(builder: GraphBuilder, module: nn.Module, name: str, path: str,
                     ids: np.ndarray, channels: int) -> None:
    """Slice a recurrent weight (``channels x channels x ...``) on both of its first two
    dimensions, and keep the size attributes of its ``Linear``/``Conv`` owner in step."""
    owner_name, owner, attr, weight = _dotted(module, name, path)
    if weight is None:
        return
    if weight.ndim < 2 or tuple(weight.shape[:2]) != (channels, channels):
        builder.space.freeze(ids, f"{name}.{path} has shape {tuple(weight.shape)}, not "
                                  f"{channels} x {channels} channels")
        return
    builder.slot(owner_name, attr, 0, ids, "carried")
    builder.slot(owner_name, attr, 1, ids, "carried")
    for size_attr in _SIZE_ATTRS.get(type(owner), ()):
        builder.count(owner_name, size_attr, ids)


def _carry(builder: GraphBuilder, call: LayerCall, x: TensorInfo, axis: int) -> Any:
    """Every output tensor gets the input's channels."""
    shapes = call.out_shape
    if isinstance(shapes, list):
        return [_carry_one(builder, call, x, axis, s) for s in shapes]
    return _carry_one(builder, call, x, axis, shapes)


def _carry_one(builder: GraphBuilder, call: LayerCall, x: TensorInfo, axis: int,
               shape: Any) -> Any:
    if not isinstance(shape, tuple):
        return None
    if shape == x.shape:
        return TensorInfo(shape, list(x.maps))
    ids = x.map_on(axis)
    if ids is None:
        return TensorInfo(shape)
    if len(shape) != x.ndim or shape[axis] != x.shape[axis]:
        return builder.unknown(call.node, [x], "an output does not keep the input's channels")
    for cmap in x.maps:
        if cmap is not ids:
            builder.space.freeze(cmap.ids, f"an output of {call.name} reshapes its input")
    return TensorInfo(shape, [ids])
