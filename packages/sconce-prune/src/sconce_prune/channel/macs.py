"""A fast multiply-accumulate count for searching a ratio that meets a MACs target.

Counts the layers that dominate: convolutions, linear layers and multi-head attention
(projections and the two attention products), per sample, from forward hooks.

Example:
    >>> import torch
    >>> from torch import nn
    >>> count_macs(nn.Conv2d(3, 8, 3, padding=1), torch.randn(1, 3, 4, 4))
    3456
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
from torch import nn

logger = logging.getLogger(__name__)

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
          nn.ConvTranspose3d)


def count_macs(model: nn.Module, example_inputs: Any) -> int:
    """Multiply-accumulates of one forward pass on ``example_inputs`` (per batch given)."""
    total = 0

    def hook(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
        nonlocal total
        if isinstance(module, _CONVS):
            kernel = math.prod(module.weight.shape[2:])
            if module.transposed:
                per_input = module.out_channels // module.groups * kernel
                total += inputs[0].numel() * per_input
            else:
                per_output = module.in_channels // module.groups * kernel
                total += output.numel() * per_output
        elif isinstance(module, nn.Linear):
            total += output.numel() * module.in_features
        elif isinstance(module, nn.MultiheadAttention):
            query = inputs[0]
            key = inputs[1] if len(inputs) > 1 else query
            if query.dim() == 2:
                batch, q_len, k_len = 1, query.shape[0], key.shape[0]
            elif module.batch_first:
                batch, q_len, k_len = query.shape[0], query.shape[1], key.shape[1]
            else:
                batch, q_len, k_len = query.shape[1], query.shape[0], key.shape[0]
            embed = module.embed_dim
            total += batch * q_len * embed * embed * 2  # query and output projections
            total += batch * k_len * (module.kdim + module.vdim) * embed  # key and value
            total += 2 * batch * q_len * k_len * embed  # scores and weighted sum

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (*_CONVS, nn.Linear, nn.MultiheadAttention))]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            args = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
            model(*args)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return int(total)
