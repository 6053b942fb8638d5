"""``snn.int8_weights``: int8 weights for the convolutions and linear layers of an SNN.

Each weight is stored as int8 codes with one float32 scale per output channel (symmetric,
``scale = max |w| / 127``, so pruned zeros stay exactly zero) and dequantized on the fly;
biases stay float32. Spikes, membranes and every snnTorch neuron are untouched, so the
network still runs step by step through the spiking adapter.

Why not ``sconce-quant``: ``quant.weight_only`` quantizes ``Linear`` layers only (the
convolutions, most of a conv SNN's weights, stay float); ``quant.int8`` and
``quant.dynamic`` hand the whole network to an int8 engine as one graph of a single time
step, in which the neurons' state becomes a constant, so the result is no longer a spiking
network (on the ``snn-cnn`` model ONNX Runtime fails at the first neuron's state update).

Example:
    >>> from torch import nn
    >>> layer = Int8Linear.from_float(nn.Linear(4, 2))
    >>> layer.qweight.dtype, layer.scale.shape
    (torch.int8, torch.Size([2]))
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sconce.config import QuantizeConfig, check_choice
from sconce.context import Context
from sconce.errors import ModelError
from sconce.footprint import Footprint, default_module_footprint, tensor_nbytes, tensor_nonzero
from sconce.technique import Technique

logger = logging.getLogger(__name__)

QMAX = 127
_CONV_FUNCTIONS = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def quantize_per_channel(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 codes and one scale per output channel (dim 0) of ``weight``.

    Example:
        >>> codes, scale = quantize_per_channel(torch.tensor([[0.5, -1.0], [0.0, 0.0]]))
        >>> codes.tolist(), scale.tolist()
        ([[64, -127], [0, 0]], [0.007874015718698502, 1.0])
    """
    flat = weight.detach().reshape(weight.shape[0], -1).to(torch.float32)
    scale = flat.abs().amax(dim=1) / QMAX
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    codes = torch.round(flat / scale[:, None]).clamp(-QMAX, QMAX).to(torch.int8)
    return codes.reshape(weight.shape), scale


class _Int8Weight(nn.Module):
    """Shared storage: int8 ``qweight``, float32 per-output-channel ``scale``, float bias."""

    bits = 8
    qweight: torch.Tensor
    scale: torch.Tensor

    def __init__(self, weight_shape: tuple[int, ...], bias: bool) -> None:
        super().__init__()
        self.register_buffer("qweight", torch.zeros(weight_shape, dtype=torch.int8))
        self.register_buffer("scale", torch.ones(weight_shape[0]))
        self.bias = nn.Parameter(torch.zeros(weight_shape[0])) if bias else None

    def _load(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        codes, scale = quantize_per_channel(weight)
        self.qweight.copy_(codes)
        self.scale.copy_(scale)
        if bias is not None and self.bias is not None:
            with torch.no_grad():
                self.bias.copy_(bias.detach())

    def dequantized_weight(self) -> torch.Tensor:
        """The float32 weight the codes stand for."""
        shape = (-1,) + (1,) * (self.qweight.dim() - 1)
        return self.qweight.to(self.scale.dtype) * self.scale.reshape(shape)

    def footprint(self) -> Footprint:
        """Codes, scales and bias as stored."""
        own = default_module_footprint(self)  # the bias, the codes' and scales' bytes
        return Footprint(own.params + self.qweight.numel(),
                         own.nonzero + tensor_nonzero(self.qweight), own.nbytes)


class Int8Linear(_Int8Weight):
    """A Linear layer with int8 weights (per output channel), dequantized on the fly.

    Example:
        >>> layer = Int8Linear(3, 2)
        >>> layer(torch.ones(1, 3)).shape
        torch.Size([1, 2])
    """

    synapse_kind = "linear"

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__((out_features, in_features), bias)
        self.in_features, self.out_features = in_features, out_features

    @classmethod
    def from_float(cls, layer: nn.Linear) -> Int8Linear:
        """The int8 version of ``layer``."""
        new = cls(layer.in_features, layer.out_features, layer.bias is not None)
        new._load(layer.weight, layer.bias)
        return new.to(layer.weight.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.dequantized_weight().to(x.dtype),
                        None if self.bias is None else self.bias.to(x.dtype))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bits=8"


class Int8Conv(_Int8Weight):
    """A 1-, 2- or 3-d convolution with int8 weights, dequantized on the fly.

    Example:
        >>> layer = Int8Conv.from_float(nn.Conv2d(1, 4, 3, padding=1))
        >>> layer(torch.ones(1, 1, 5, 5)).shape
        torch.Size([1, 4, 5, 5])
    """

    synapse_kind = "conv"

    def __init__(self, weight_shape: tuple[int, ...], *, stride: tuple[int, ...],
                 padding: Any, dilation: tuple[int, ...], groups: int,
                 bias: bool = True) -> None:
        super().__init__(weight_shape, bias)
        self.stride, self.padding, self.dilation, self.groups = stride, padding, dilation, groups
        self.out_channels = weight_shape[0]
        self.in_channels = weight_shape[1] * groups
        self.kernel_size = tuple(weight_shape[2:])

    @classmethod
    def from_float(cls, layer: nn.Conv1d | nn.Conv2d | nn.Conv3d) -> Int8Conv:
        """The int8 version of ``layer`` (zero padding only)."""
        new = cls.like(layer)
        new._load(layer.weight, layer.bias)
        return new.to(layer.weight.device)

    @classmethod
    def like(cls, layer: nn.Conv1d | nn.Conv2d | nn.Conv3d) -> Int8Conv:
        """An empty int8 convolution with ``layer``'s shape and settings."""
        if layer.padding_mode != "zeros" or layer.transposed:
            raise ModelError(f"int8 weights support zero-padded convolutions only, not "
                             f"padding_mode={layer.padding_mode!r} / transposed ones")
        return cls(tuple(layer.weight.shape), stride=tuple(layer.stride),
                   padding=layer.padding, dilation=tuple(layer.dilation),
                   groups=layer.groups, bias=layer.bias is not None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv = _CONV_FUNCTIONS[self.qweight.dim() - 2]
        return conv(x, self.dequantized_weight().to(x.dtype),
                    None if self.bias is None else self.bias.to(x.dtype),
                    self.stride, self.padding, self.dilation, self.groups)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, groups={self.groups}, bits=8")


def int8_footprint(module: nn.Module) -> Footprint | None:
    """True storage of this package's int8 layers (None for any other module).

    Example:
        >>> int8_footprint(Int8Linear(100, 10)).nbytes  # 1,000 codes + 10 scales + 10 biases
        1080
    """
    return module.footprint() if isinstance(module, _Int8Weight) else None


_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


@dataclass
class Int8WeightsConfig(QuantizeConfig):
    """Settings of ``snn.int8_weights``.

    Attributes:
        bits: 8 (the only width offered).
        skip: layers (module names) to leave in float.

    Example:
        >>> Int8WeightsConfig(skip=("fc",)).skip
        ('fc',)
    """

    bits: int = 8
    skip: tuple[str, ...] = ()

    def validate(self) -> None:
        super().validate()
        check_choice("bits", self.bits, (8,))


def _targets(model: nn.Module, skip: tuple[str, ...]) -> list[str]:
    return [name for name, module in model.named_modules()
            if name and name not in skip and (
                isinstance(module, nn.Linear)
                or (isinstance(module, _CONV) and module.padding_mode == "zeros"
                    and not module.transposed))]


def _int8(model: nn.Module, name: str) -> _Int8Weight:
    layer = model.get_submodule(name)
    if not isinstance(layer, _Int8Weight):
        raise ModelError(f"{name} is not an int8 layer")
    return layer


class Int8Weights(Technique):
    """int8 weights (per output channel) for every convolution and linear layer of an SNN.

    Example:
        >>> from sconce.context import Context
        >>> net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(8, 2))
        >>> quantized = Int8Weights().apply(net, Int8WeightsConfig(),
        ...                                 Context.for_inputs(torch.ones(1, 1, 4, 4)))
        >>> [type(m).__name__ for m in quantized]
        ['Int8Conv', 'Flatten', 'Int8Linear']
    """

    name = "snn.int8_weights"
    kind = "quantize"
    Config = Int8WeightsConfig

    def apply(self, model: nn.Module, config: Int8WeightsConfig, ctx: Context
              ) -> nn.Module:
        names = _targets(model, tuple(config.skip))
        if not names:
            raise ModelError("snn.int8_weights found no convolution or linear layer to "
                             "quantize")
        for name in names:
            layer = model.get_submodule(name)
            new = (Int8Linear.from_float(layer) if isinstance(layer, nn.Linear)
                   else Int8Conv.from_float(layer))  # type: ignore[arg-type]
            model.set_submodule(name, new)
        stored = sum(tensor_nbytes(_int8(model, n).qweight) for n in names)
        ctx.note("int8 weights", f"{len(names)} layers, {stored:,} bytes of codes")
        ctx.set_restore_record({"layers": names})
        return model

    def restore(self, model: nn.Module, config: Int8WeightsConfig, record: dict[str, Any]
                ) -> nn.Module:
        """Swap the recorded layers for empty int8 layers of the same shapes."""
        for name in record["layers"]:
            layer = model.get_submodule(name)
            if isinstance(layer, nn.Linear):
                new: nn.Module = Int8Linear(layer.in_features, layer.out_features,
                                            layer.bias is not None)
            elif isinstance(layer, _CONV):
                new = Int8Conv.like(layer)
            else:
                raise ModelError(f"{name} is a {type(layer).__name__}, not the convolution or "
                                 "linear layer that was quantized")
            model.set_submodule(name, new)
        return model
