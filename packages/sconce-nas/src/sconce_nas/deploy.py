"""BatchNorm statistics per subnet, and the deployed form of a model (BatchNorms folded).

A subnet cut from a supernet inherits running statistics accumulated by all subnets together;
:func:`recalibrate_batchnorms` re-estimates them for this subnet alone from a few training
batches. :func:`deploy` folds every BatchNorm that directly follows a convolution inside an
``nn.Sequential`` into that convolution (``torch.nn.utils.fusion.fuse_conv_bn_eval``) and
optionally stores conv weights channels-last: the form that is timed, measured and shipped.

Example:
    >>> import torch
    >>> from torch import nn
    >>> model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU()).eval()
    >>> x = torch.randn(1, 1, 6, 6)
    >>> folded = deploy(model)
    >>> type(folded[1]).__name__, torch.allclose(folded(x), model(x), atol=1e-5)
    ('Identity', True)
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.utils.fusion import fuse_conv_bn_eval

from sconce.adapter import ClassifierAdapter, ModelAdapter

logger = logging.getLogger(__name__)


def recalibrate_batchnorms(model: nn.Module, batches: Iterable[Any],
                           adapter: ModelAdapter | None = None) -> nn.Module:
    """Re-estimate every BatchNorm's running statistics from ``batches`` (inputs only).

    The statistics are the exact average over the batches (cumulative, no momentum). The
    model is left in eval mode; its weights do not change.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2))
        >>> _ = recalibrate_batchnorms(net, [torch.ones(4, 1, 2, 2) * 3])
        >>> net[1].running_var.tolist()
        [0.0, 0.0]
    """
    adapter = adapter or ClassifierAdapter()
    norms = [m for m in model.modules() if isinstance(m, _BatchNorm)]
    momenta = [m.momentum for m in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None
    model.train()
    try:
        with torch.no_grad():
            for inputs in batches:
                adapter.forward(model, inputs)
    finally:
        for norm, momentum in zip(norms, momenta, strict=True):
            norm.momentum = momentum
        model.eval()
    return model


def fold_batchnorms(model: nn.Module) -> int:
    """Fold, in place, each ``BatchNorm2d`` that follows a ``Conv2d`` in an ``nn.Sequential``
    into the conv (which gains a bias); the BatchNorm becomes ``nn.Identity``. Returns how
    many were folded. The model must be in eval mode.

    Example:
        >>> from torch import nn
        >>> fold_batchnorms(nn.Sequential(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2)).eval())
        1
    """
    folded = 0
    for module in model.modules():
        if not isinstance(module, nn.Sequential):
            continue
        for index in range(len(module) - 1):
            conv, norm = module[index], module[index + 1]
            if isinstance(conv, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d):
                module[index] = fuse_conv_bn_eval(conv, norm)
                module[index + 1] = nn.Identity()
                folded += 1
    return folded


def deploy(model: nn.Module, *, channels_last: bool = False, inplace: bool = False
           ) -> nn.Module:
    """The deployed form of ``model`` (eval mode, BatchNorms folded, optionally channels-last).

    Example:
        >>> from torch import nn
        >>> m = nn.Sequential(nn.Conv2d(1, 2, 1, bias=False), nn.BatchNorm2d(2))
        >>> deploy(m)[0].bias is not None, m[0].bias is None
        (True, True)
    """
    target = model if inplace else copy.deepcopy(model)
    target.eval()
    with torch.no_grad():
        fold_batchnorms(target)
    if channels_last:
        target.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    return target
