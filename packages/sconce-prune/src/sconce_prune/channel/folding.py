"""Fold each BatchNorm into the conv / linear layer right before it (for deployment).

``y = gamma * (W x + b - mean) / sqrt(var + eps) + beta`` equals a conv with weights
``W * s`` and bias ``(b - mean) * s + beta`` where ``s = gamma / sqrt(var + eps)``. The
BatchNorm becomes an ``nn.Identity`` so the forward code is unchanged. Only pairs found in
the traced graph are folded: the BatchNorm reads the layer's output and nothing else does.

Example:
    >>> import torch
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).eval()
    >>> x = torch.randn(2, 3, 8, 8)
    >>> before = net(x)
    >>> fold_batchnorms(net, x[:1])
    ['1']
    >>> torch.allclose(before, net(x), atol=1e-5), type(net[1]).__name__
    (True, 'Identity')
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable
from typing import Any

import torch
from torch import fx, nn

from sconce_prune.channel.tracing import trace

logger = logging.getLogger(__name__)

_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_FOLDABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
             nn.ConvTranspose3d, nn.Linear)


def fold_batchnorms(model: nn.Module, example_inputs: Any,
                    traced: fx.GraphModule | None = None) -> list[str]:
    """Fold every foldable BatchNorm of ``model`` in place; returns their names.

    Args:
        model: the model (its BatchNorms must hold running statistics).
        example_inputs: inputs for tracing (batch 1 is enough).
        traced: the model's graph, with shapes, when the caller already traced it.

    Returns:
        The qualified names of the BatchNorms replaced by ``nn.Identity``.
    """
    gm = traced if traced is not None else trace(model, example_inputs, shapes=False)
    calls = Counter(str(n.target) for n in gm.graph.nodes if n.op == "call_module")
    modules = dict(model.named_modules())
    pairs = [p for p in (_foldable_pair(modules, n, calls) for n in gm.graph.nodes) if p]
    if traced is None and any(isinstance(modules[layer], nn.Linear) for layer, _ in pairs):
        gm = trace(model, example_inputs)  # Linear + BatchNorm1d: check the shapes
        pairs = [p for p in (_foldable_pair(modules, n, calls) for n in gm.graph.nodes) if p]
    folded = []
    for layer, norm in pairs:
        _fold(modules[layer], modules[norm])
        parent, _, child = norm.rpartition(".")
        setattr(modules[parent], child, nn.Identity())
        folded.append(norm)
    if folded:
        logger.info("folded %d BatchNorm layers", len(folded))
    return folded


def recalibrate_batchnorms(model: nn.Module, batches: Iterable[Any], adapter: Any = None
                           ) -> int:
    """Re-estimate every BatchNorm's running statistics on ``batches`` (no gradients).

    Pruning changes what each BatchNorm sees; averaging its statistics afresh over a few
    batches (``momentum=None``) gives the narrower network sound statistics before any
    fine-tuning. Returns the number of batches used.

    Example:
        >>> net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
        >>> recalibrate_batchnorms(net, [torch.randn(16, 3) + 5 for _ in range(2)])
        2
        >>> bool(net[1].running_mean.abs().sum() > 0)
        True
    """
    norms = [m for m in model.modules()
             if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms:
        return 0
    momenta = [m.momentum for m in norms]
    was_training = model.training
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None
    model.train()
    used = 0
    try:
        with torch.no_grad():
            for inputs in batches:
                if adapter is not None:
                    adapter.forward(model, inputs)
                elif isinstance(inputs, tuple):
                    model(*inputs)
                else:
                    model(inputs)
                used += 1
    finally:
        for norm, momentum in zip(norms, momenta, strict=True):
            norm.momentum = momentum
        model.train(was_training)
    return used


def _foldable_pair(modules: dict[str, nn.Module], node: fx.Node, calls: Counter[str]
                   ) -> tuple[str, str] | None:
    if node.op != "call_module" or calls[str(node.target)] != 1:
        return None
    norm = modules[str(node.target)]
    if not isinstance(norm, _BATCH_NORMS) or norm.running_mean is None:
        return None
    source = node.args[0] if node.args else None
    if not isinstance(source, fx.Node) or source.op != "call_module" \
            or calls[str(source.target)] != 1 or len(source.users) != 1:
        return None
    layer = modules[str(source.target)]
    if not isinstance(layer, _FOLDABLE):
        return None
    if isinstance(layer, nn.Linear):
        shape = source.meta.get("tensor_meta")
        if shape is not None and len(shape.shape) != 2:  # BatchNorm1d reads (N, C) only
            return None
    return str(source.target), str(node.target)


def _tensor(module: nn.Module, name: str) -> torch.Tensor | None:
    value = getattr(module, name, None)
    return value if isinstance(value, torch.Tensor) else None


def _fold(layer: nn.Module, norm: nn.Module) -> None:
    mean, var = _tensor(norm, "running_mean"), _tensor(norm, "running_var")
    weight = _tensor(layer, "weight")
    if mean is None or var is None or weight is None:  # _foldable_pair admits none of these
        raise ValueError(f"cannot fold {type(norm).__name__} into {type(layer).__name__}")
    gamma, beta, bias = _tensor(norm, "weight"), _tensor(norm, "bias"), _tensor(layer, "bias")
    with torch.no_grad():
        scale = var.add(float(getattr(norm, "eps", 1e-5))).rsqrt()
        if gamma is not None:
            scale = scale * gamma
        shift = -mean * scale
        if beta is not None:
            shift = shift + beta
        if getattr(layer, "transposed", False):
            groups = int(getattr(layer, "groups", 1))
            shape = weight.shape
            view = weight.view(groups, shape[0] // groups, shape[1], *shape[2:])
            factor = scale.view(groups, 1, shape[1], *([1] * (weight.dim() - 2)))
            weight.copy_((view * factor).view(shape))
        else:
            weight.mul_(scale.view(-1, *([1] * (weight.dim() - 1))))
        if bias is None:
            layer.bias = nn.Parameter(shift.clone())
        else:
            bias.copy_(bias * scale + shift)
