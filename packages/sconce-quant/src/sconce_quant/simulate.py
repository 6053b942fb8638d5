"""Simulated int8 in float: fake-quantized inputs and per-channel weights of Conv/Linear layers.

Used to measure how much quantizing one layer costs (mixed precision) and to fine-tune under
quantization noise (QAT). The weight is fake-quantized per output channel from its current
values at every call, so the simulation stays right while training changes it; because a
per-channel symmetric scale absorbs any per-channel factor, quantizing a convolution before or
after its batch norm is folded gives the same integers. The input is fake-quantized with the
range calibrated for it (the same estimator the engines use).

Example:
    >>> import torch
    >>> from torch import nn
    >>> layer = FakeQuantLayer(nn.Linear(4, 2), low=-1.0, high=1.0, levels=256)
    >>> layer(torch.randn(3, 4)).shape
    torch.Size([3, 2])
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from sconce_quant.calibration import RangeEstimator
from sconce_quant.engines.base import as_args
from sconce_quant.qparams import affine_qparams, per_channel_scales

logger = logging.getLogger(__name__)

QUANTIZABLE = (nn.Conv2d, nn.Conv1d, nn.Linear)


class FakeQuantLayer(nn.Module):
    """A Conv or Linear layer whose input and weight are fake-quantized to int8.

    Args:
        layer: the wrapped layer (its parameters stay trainable).
        low, high: the calibrated range of the layer's input.
        levels: integer levels of the input (256, or 128 with reduce_range).
        per_channel: one weight scale per output channel (else per tensor).

    Example:
        >>> layer = FakeQuantLayer(nn.Linear(2, 2), low=0.0, high=2.55, levels=256)
        >>> layer.input_scale
        0.01
    """

    def __init__(self, layer: nn.Module, *, low: float, high: float, levels: int = 256,
                 per_channel: bool = True) -> None:
        super().__init__()
        self.layer = layer
        self.input_qmax = levels - 1
        self.input_scale, self.input_zero = affine_qparams(low, high, 0, self.input_qmax)
        self.per_channel = per_channel

    def quantized_weight(self) -> torch.Tensor:
        """The weight as the int8 engine will see it (fake-quantized)."""
        weight = cast(torch.Tensor, self.layer.weight)
        if self.per_channel:
            scales = per_channel_scales(weight).detach()
            zeros = torch.zeros(scales.shape, dtype=torch.int32, device=weight.device)
            return torch.fake_quantize_per_channel_affine(weight, scales, zeros, 0, -127, 127)
        scale = float(per_channel_scales(weight.reshape(1, -1))[0])
        return torch.fake_quantize_per_tensor_affine(weight, scale, 0, -127, 127)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.fake_quantize_per_tensor_affine(x, self.input_scale, self.input_zero, 0,
                                                  self.input_qmax)
        weight = self.quantized_weight()
        layer = self.layer
        if isinstance(layer, nn.Linear):
            return F.linear(x, weight, layer.bias)
        return layer._conv_forward(x, weight, layer.bias)  # type: ignore[operator]


def quantizable_layers(model: nn.Module, skip: Iterable[str] = ()) -> list[str]:
    """Names of the Conv and Linear layers of ``model``, minus ``skip``.

    Example:
        >>> quantizable_layers(nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1)))
        ['0', '2']
    """
    skipped = set(skip)
    return [name for name, module in model.named_modules()
            if isinstance(module, QUANTIZABLE) and name not in skipped]


def calibrate_inputs(model: nn.Module, layers: Sequence[str], batches: Iterable[Any]
                     ) -> dict[str, RangeEstimator]:
    """A :class:`RangeEstimator` of each layer's input over ``batches``.

    Example:
        >>> model = nn.Sequential(nn.Linear(2, 2))
        >>> calibrate_inputs(model, ["0"], [torch.ones(4, 2)])["0"].range("minmax")
        (0.0, 1.0)
    """
    modules = dict(model.named_modules())
    estimators = {name: RangeEstimator() for name in layers}
    handles = [modules[name].register_forward_pre_hook(
        lambda module, args, est=estimators[name]: est.update(args[0])) for name in layers]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for batch in batches:
                model(*as_args(batch))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return estimators


def wrap_layers(model: nn.Module, ranges: dict[str, tuple[float, float]], *, levels: int,
                per_channel: bool) -> nn.Module:
    """Replace each named layer by a :class:`FakeQuantLayer` (in place).

    Example:
        >>> model = wrap_layers(nn.Sequential(nn.Linear(2, 2)), {"0": (0.0, 1.0)}, levels=256,
        ...                     per_channel=True)
        >>> type(model[0]).__name__
        'FakeQuantLayer'
    """
    modules = dict(model.named_modules())
    for name, (low, high) in ranges.items():
        model.set_submodule(name, FakeQuantLayer(modules[name], low=low, high=high,
                                               levels=levels, per_channel=per_channel))
    return model


def unwrap_layers(model: nn.Module) -> nn.Module:
    """Put every wrapped layer back (with its trained weights), in place.

    Example:
        >>> model = wrap_layers(nn.Sequential(nn.Linear(2, 2)), {"0": (0.0, 1.0)}, levels=256,
        ...                     per_channel=True)
        >>> type(unwrap_layers(model)[0]).__name__
        'Linear'
    """
    for name, module in list(model.named_modules()):
        if isinstance(module, FakeQuantLayer):
            model.set_submodule(name, module.layer)
    return model


@contextmanager
def simulated(model: nn.Module, ranges: dict[str, tuple[float, float]], *, levels: int,
              per_channel: bool) -> Iterator[nn.Module]:
    """``model`` with the named layers simulated in int8 for the duration of the block.

    Example:
        >>> model = nn.Sequential(nn.Linear(2, 2))
        >>> with simulated(model, {"0": (-1.0, 1.0)}, levels=256, per_channel=True) as m:
        ...     type(m[0]).__name__
        'FakeQuantLayer'
    """
    wrap_layers(model, ranges, levels=levels, per_channel=per_channel)
    try:
        yield model
    finally:
        unwrap_layers(model)
