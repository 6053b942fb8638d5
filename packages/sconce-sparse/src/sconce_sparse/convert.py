"""Which layers of a model can go sparse, swapping them, and the JSON record that rebuilds them.

Candidates are modules of exactly these types (subclasses may run their weight in their own
way): ``nn.Linear``, ``nn.Conv1d`` / ``nn.Conv2d`` (``groups=1``, integer zero padding),
``nn.Embedding`` (storage only) and torch.ao's int8 Linear / Conv layers (storage only).
Left alone, with the reason in the report: layers inside ``nn.MultiheadAttention`` (it reads
its projections' weights directly), layers whose weight another module shares (a tied
language-model head), and weights with fewer zeros than ``min_sparsity``.

Example:
    >>> import torch
    >>> from torch import nn
    >>> model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    >>> with torch.no_grad():
    ...     model[0].weight[:, :6] = 0.0
    >>> found = find_layers(model, min_sparsity=0.5)
    >>> [(c.name, c.kind, round(c.sparsity, 2)) for c in found.layers], found.left_dense
    ([('0', 'linear', 0.75)], {'2': 'sparsity 0.0% < 50%'})
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from sconce.errors import ConfigError, ModelError
from sconce_sparse.layers import (
    DENSE_PLAN,
    Plan,
    SparseConv,
    SparseEmbedding,
    SparseLayer,
    SparseLinear,
)
from sconce_sparse.quantized import SparseQuantized, is_int8_layer

logger = logging.getLogger(__name__)

__all__ = ["Candidate", "Found", "build_layer", "find_layers", "layer_record", "replace_module",
           "restore_layers", "to_sparse"]


@dataclass
class Candidate:
    """A layer that can be stored (and maybe run) sparse.

    Attributes:
        name: its qualified name.
        module: the layer.
        kind: ``linear``, ``conv``, ``embedding`` or ``int8``.
        sparsity: fraction of its weight values that are zero (int8: at the zero point).
    """

    name: str
    module: nn.Module
    kind: str
    sparsity: float

    @property
    def runs_sparse(self) -> bool:
        """Whether a sparse kernel can run it (embeddings and int8 layers are storage only)."""
        return self.kind in ("linear", "conv")


@dataclass
class Found:
    """The candidates of a model, and the layers left as they are with the reason."""

    layers: list[Candidate] = field(default_factory=list)
    left_dense: dict[str, str] = field(default_factory=dict)


def _kind(module: nn.Module) -> str | None:
    if type(module) is nn.Linear:
        return "linear"
    if type(module) in (nn.Conv1d, nn.Conv2d):
        return "conv"
    if type(module) is nn.Embedding:
        return "embedding"
    if is_int8_layer(module):
        return "int8"
    return None


def _unsupported(module: nn.Module, kind: str) -> str | None:
    if kind == "conv":
        conv: Any = module
        if conv.groups != 1:
            return "grouped convolution"
        if isinstance(conv.padding, str) or conv.padding_mode != "zeros":
            return "padding other than explicit zeros"
    if kind == "embedding" and getattr(module, "max_norm", None) is not None:
        return "embedding with max_norm"
    return None


def _sparsity(module: Any, kind: str) -> float:
    with torch.no_grad():
        if kind == "int8":
            weight = module.weight()
            codes = weight.int_repr().reshape(weight.shape[0], -1).to(torch.int16)
            zero = (weight.q_per_channel_zero_points().reshape(-1, 1) if weight.qscheme() in (
                torch.per_channel_affine, torch.per_channel_symmetric)
                else torch.tensor(weight.q_zero_point()))
            return float((codes == zero).float().mean())
        weight = module.weight
        return float((weight == 0).float().mean()) if weight.numel() else 0.0


def _skipped(name: str, patterns: Sequence[str]) -> bool:
    return any(name == p or name.startswith(p + ".") or fnmatch.fnmatchcase(name, p)
               for p in patterns)


def find_layers(model: nn.Module, *, min_sparsity: float = 0.3,
                skip_layers: Sequence[str] = (), kinds: Sequence[str] = (
                    "linear", "conv", "embedding", "int8")) -> Found:
    """The layers of ``model`` whose weight is sparse enough to store or run sparse.

    Args:
        model: any model.
        min_sparsity: layers with a smaller fraction of zero weights are left as they are.
        skip_layers: module names or globs to leave alone.
        kinds: which candidate kinds to look for.

    Raises:
        ConfigError: a ``skip_layers`` entry that matches no module.

    Example:
        >>> find_layers(nn.Linear(4, 4)).left_dense
        {'': 'sparsity 0.0% < 30%'}
    """
    names = [name for name, _ in model.named_modules()]
    for pattern in skip_layers:
        if not any(_skipped(name, [pattern]) for name in names):
            raise ConfigError(f"skip_layers: no module is called {pattern!r}")
    owners: dict[int, int] = {}
    for module in model.modules():
        for param in module.parameters(recurse=False):
            owners[id(param)] = owners.get(id(param), 0) + 1
    inside_attention = {f"{name}.{child}" if name else child
                        for name, module in model.named_modules()
                        if isinstance(module, nn.MultiheadAttention)
                        for child, _ in module.named_modules() if child}
    found = Found()
    for name, module in model.named_modules():
        kind = _kind(module)
        if kind is None or kind not in kinds or _skipped(name, skip_layers):
            continue
        reason = _unsupported(module, kind)
        if name in inside_attention:
            reason = "inside nn.MultiheadAttention (it reads the weight directly)"
        elif kind != "int8" and owners.get(id(module.weight), 0) > 1:
            reason = "weight shared with another module"
        if reason is None:
            sparsity = _sparsity(module, kind)
            if sparsity < min_sparsity or sparsity == 0.0:
                reason = f"sparsity {sparsity:.1%} < {min_sparsity:.0%}"
            else:
                found.layers.append(Candidate(name, module, kind, sparsity))
                continue
        found.left_dense[name] = reason
    return found


def to_sparse(candidate: Candidate, plan: Plan = DENSE_PLAN, encoding: str = "auto"
              ) -> SparseLayer | SparseQuantized:
    """The sparse layer that replaces ``candidate`` (running ``plan``).

    Example:
        >>> linear = nn.Linear(4, 4)
        >>> with torch.no_grad():
        ...     _ = linear.weight[:, :2].zero_()
        >>> to_sparse(find_layers(linear).layers[0])
        SparseLinear(weight=(4, 4), encoding=bitmask, plan=[any rows: dense])
    """
    module: Any = candidate.module
    if candidate.kind == "linear":
        return SparseLinear.from_linear(module, plan, encoding)
    if candidate.kind == "conv":
        return SparseConv.from_conv(module, plan, encoding)
    if candidate.kind == "embedding":
        return SparseEmbedding.from_embedding(module, encoding)
    return SparseQuantized.wrap(module, encoding)


def layer_record(layer: SparseLayer | SparseQuantized) -> dict[str, Any]:
    """What :func:`build_layer` needs to rebuild an empty ``layer`` (JSON-able).

    Example:
        >>> layer_record(SparseLinear(4, 2))["plan"]
        [[None, 'dense']]
    """
    if isinstance(layer, SparseQuantized):
        return {"type": "int8", "encoding": layer.encoding, "per_channel": layer.axis == 0}
    common = {"plan": [list(entry) for entry in layer.plan], "encoding": layer.encoding}
    if isinstance(layer, SparseLinear):
        return {"type": "linear", "in": layer.in_features, "out": layer.out_features,
                "bias": layer.bias is not None, **common}
    if isinstance(layer, SparseConv):
        return {"type": "conv", "dims": layer.dims, "in": layer.in_channels,
                "out": layer.out_channels, "kernel": list(layer.kernel_size),
                "stride": list(layer.stride), "padding": list(layer.padding),
                "dilation": list(layer.dilation), "bias": layer.bias is not None, **common}
    if isinstance(layer, SparseEmbedding):
        return {"type": "embedding", "num": layer.num_embeddings, "dim": layer.embedding_dim,
                "padding_idx": layer.padding_idx, "encoding": layer.encoding}
    raise TypeError(f"not a sparse layer: {type(layer).__name__}")


def build_layer(record: dict[str, Any], current: nn.Module | None = None
                ) -> SparseLayer | SparseQuantized:
    """An empty sparse layer from its :func:`layer_record` (weights come from the state dict).

    ``current`` is the module at that place in the rebuilt model: an int8 layer is wrapped
    as it is (the quantization technique's restore rebuilt it).

    Example:
        >>> build_layer({"type": "linear", "in": 4, "out": 2, "bias": False,
        ...              "plan": [[None, "csr"]]})
        SparseLinear(weight=(2, 4), encoding=bitmask, plan=[any rows: csr])
    """
    kind = record.get("type")
    plan = tuple(tuple(entry) for entry in record.get("plan", DENSE_PLAN))
    if kind == "linear":
        return SparseLinear(record["in"], record["out"], record["bias"], plan)
    if kind == "conv":
        return SparseConv(record["dims"], record["in"], record["out"], record["kernel"],
                          record["stride"], record["padding"], record["dilation"],
                          record["bias"], plan)
    if kind == "embedding":
        return SparseEmbedding(record["num"], record["dim"], record.get("padding_idx"))
    if kind == "int8":
        if current is None or not is_int8_layer(current):
            raise ModelError("the saved model stores an int8 layer sparse, but the rebuilt "
                             f"model has a {type(current).__name__} there")
        return SparseQuantized(current, record.get("per_channel"))
    raise ModelError(f"unknown sparse layer type {kind!r} in the saved record")


def replace_module(model: nn.Module, name: str, module: nn.Module) -> nn.Module:
    """Put ``module`` at ``name`` in ``model`` (the model itself for ``""``); returns the model.

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 2))
        >>> type(replace_module(net, "0", nn.Identity())[0]).__name__
        'Identity'
    """
    if not name:
        return module
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)
    return model


def restore_layers(model: nn.Module, records: dict[str, dict[str, Any]]) -> nn.Module:
    """Put empty sparse layers where the records say (for :func:`sconce.load`).

    Example:
        >>> net = restore_layers(nn.Sequential(nn.Linear(4, 2)),
        ...                      {"0": {"type": "linear", "in": 4, "out": 2, "bias": True}})
        >>> type(net[0]).__name__
        'SparseLinear'
    """
    for name, record in records.items():
        current = model.get_submodule(name) if name else model
        model = replace_module(model, name, build_layer(record, current))
    return model
