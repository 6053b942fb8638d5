"""The built-in family: an elastic CNN of inverted-residual stages, shaped by the data.

A stem conv, then stages of blocks, then a 1x1 head conv, global average pooling and a
linear classifier. Per stage the search chooses a width multiplier, a depth, a kernel size
and an expansion ratio. Two block types (a family setting, not searched): ``fused`` (Fused-
MBConv of EfficientNetV2: a kxk conv expanding to ``expansion`` times the input channels,
then a 1x1 projection) and ``mbconv`` (MobileNetV2's: 1x1 expand, depthwise kxk, 1x1
project); both add the input back where shapes allow. ``fused`` is the default because
PyTorch's CPU kernels run depthwise convolutions slowly at batch 1: measured here, a 3x3
depthwise conv over 128 channels at 14x14 (0.23 M MACs) takes 75-110 us while a 1x1 conv with
3.5 times the MACs takes 37 us, so MBConv stages lose to plain convolutions on latency.
Input channels, image size and class count come from the data; the stem stride and the
stage strides adapt so small images are not pooled away.

Example:
    >>> import torch
    >>> space = ElasticCNN(in_channels=1, image_size=28, num_classes=10)
    >>> model = space.build(space.smallest())
    >>> model(torch.randn(2, 1, 28, 28)).shape
    torch.Size([2, 10])
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from sconce.errors import ConfigError
from sconce_nas.space import Dimension, SearchSpace, register_family

logger = logging.getLogger(__name__)

DEFAULT_STAGES: tuple[tuple[int, int], ...] = ((24, 2), (48, 3), (96, 2))
"""``(channels at width 1.0, largest depth)`` per stage; each stage halves the resolution.

Sized for small images (Fashion-MNIST, CIFAR) and batch-1 CPU latency: the supernet's
largest member (32 M MACs at 28x28) costs about what the VGG-style reference costs to train,
and about a quarter of the members run within half that VGG's batch-1 latency."""
DEFAULT_WIDTHS: tuple[float, ...] = (0.5, 0.75, 1.0)
DEFAULT_KERNELS: tuple[int, ...] = (3, 5)
DEFAULT_EXPANSIONS: tuple[int, ...] = (1, 2)
BLOCKS: tuple[str, ...] = ("fused", "mbconv")


def round_channels(value: float, divisor: int = 8) -> int:
    """``value`` rounded up to a multiple of ``divisor`` (monotone, at least ``divisor``).

    Example:
        >>> round_channels(24 * 0.75), round_channels(3)
        (24, 8)
    """
    return max(divisor, math.ceil(value / divisor - 1e-9) * divisor)


class ConvBNAct(nn.Sequential):
    """``Conv2d -> BatchNorm2d [-> ReLU]`` with "same" padding, as siblings 0, 1, 2.

    Example:
        >>> [type(m).__name__ for m in ConvBNAct(3, 8, 3)]
        ['Conv2d', 'BatchNorm2d', 'ReLU']
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, *,
                 stride: int = 1, groups: int = 1, act: bool = True) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2,
                      groups=groups, bias=False),
            nn.BatchNorm2d(out_channels),
        ]
        if act:
            layers.append(nn.ReLU())
        super().__init__(*layers)


class MBConv(nn.Module):
    """Inverted residual block: 1x1 expand, depthwise kxk, 1x1 project (+ input).

    Example:
        >>> block = MBConv(16, 16, expansion=3, kernel_size=5, stride=1)
        >>> block(torch.randn(1, 16, 8, 8)).shape, block.residual
        (torch.Size([1, 16, 8, 8]), True)
    """

    def __init__(self, in_channels: int, out_channels: int, *, expansion: int,
                 kernel_size: int, stride: int) -> None:
        super().__init__()
        hidden = round_channels(in_channels * expansion)
        self.expand = ConvBNAct(in_channels, hidden, 1)
        self.depthwise = ConvBNAct(hidden, hidden, kernel_size, stride=stride, groups=hidden)
        self.project = ConvBNAct(hidden, out_channels, 1, act=False)
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Run the block."""
        y = self.project(self.depthwise(self.expand(x)))
        return x + y if self.residual else y


class FusedMBConv(nn.Module):
    """Fused inverted residual block: kxk conv expand, 1x1 project (+ input).

    Example:
        >>> block = FusedMBConv(16, 24, expansion=2, kernel_size=3, stride=2)
        >>> block(torch.randn(1, 16, 8, 8)).shape, block.residual
        (torch.Size([1, 24, 4, 4]), False)
    """

    def __init__(self, in_channels: int, out_channels: int, *, expansion: int,
                 kernel_size: int, stride: int) -> None:
        super().__init__()
        hidden = round_channels(in_channels * expansion)
        self.expand = ConvBNAct(in_channels, hidden, kernel_size, stride=stride)
        self.project = ConvBNAct(hidden, out_channels, 1, act=False)
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Run the block."""
        y = self.project(self.expand(x))
        return x + y if self.residual else y


class Head(nn.Module):
    """1x1 conv-bn-relu, global average pooling and the linear classifier.

    Example:
        >>> Head(16, 32, 10)(torch.randn(2, 16, 4, 4)).shape
        torch.Size([2, 10])
    """

    def __init__(self, in_channels: int, features: int, num_classes: int) -> None:
        super().__init__()
        self.conv = ConvBNAct(in_channels, features, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Classify a feature map."""
        return self.classifier(torch.flatten(self.pool(self.conv(x)), 1))


class ElasticNet(nn.Module):
    """One member of :class:`ElasticCNN`: stem, stages of blocks, :class:`Head`."""

    def __init__(self, stem: nn.Module, stages: Sequence[nn.Sequential], head: nn.Module
                 ) -> None:
        super().__init__()
        self.stem = stem
        self.stages = nn.Sequential(*stages)
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Classify a batch of images."""
        return self.head(self.stages(self.stem(x)))


class ElasticCNN(SearchSpace):
    """Inverted-residual stages with a per-stage width multiplier, depth, kernel size and
    expansion ratio.

    Args:
        in_channels, image_size, num_classes: from the data.
        stages: ``(channels at width 1.0, largest depth)`` per stage; each stage halves the
            resolution (stride 2 in its first block) while the map is larger than 4x4.
        widths, kernels, expansions: the options of every stage, smallest first.
        block: ``fused`` (:class:`FusedMBConv`, the default) or ``mbconv`` (:class:`MBConv`).
        stem_channels: output channels of the stem conv (stride 2 for images of 64 pixels
            or more, 1 below).
        head_channels: output channels of the 1x1 head conv.

    Example:
        >>> space = ElasticCNN(in_channels=3, image_size=32, num_classes=10)
        >>> space.size, len(space.dimensions())
        (20736, 12)
    """

    family = "elastic-cnn"

    def __init__(self, *, in_channels: int = 3, image_size: int = 32, num_classes: int = 10,
                 stages: Sequence[Sequence[int]] = DEFAULT_STAGES,
                 widths: Sequence[float] = DEFAULT_WIDTHS,
                 kernels: Sequence[int] = DEFAULT_KERNELS,
                 expansions: Sequence[int] = DEFAULT_EXPANSIONS, block: str = "fused",
                 stem_channels: int = 16, head_channels: int = 256) -> None:
        for name, value in (("in_channels", in_channels), ("image_size", image_size),
                            ("num_classes", num_classes), ("stem_channels", stem_channels),
                            ("head_channels", head_channels)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"elastic-cnn: {name} must be a positive int, got {value!r}")
        self.in_channels, self.image_size, self.num_classes = in_channels, image_size, num_classes
        self.stages = tuple((int(c), int(d)) for c, d in stages)
        if not self.stages or any(c < 1 or d < 1 for c, d in self.stages):
            raise ConfigError(f"elastic-cnn: stages must be (channels, depth) pairs >= 1, "
                              f"got {list(stages)!r}")
        self.widths = _ascending("widths", widths, float)
        self.kernels = _ascending("kernels", kernels, int)
        if any(k % 2 == 0 for k in self.kernels):
            raise ConfigError(f"elastic-cnn: kernels must be odd, got {list(kernels)!r}")
        self.expansions = _ascending("expansions", expansions, int)
        if block not in BLOCKS:
            raise ConfigError(f"elastic-cnn: block must be one of {', '.join(BLOCKS)}, "
                              f"got {block!r}")
        self.block = block
        self.stem_channels, self.head_channels = stem_channels, head_channels
        self.stem_stride = 2 if image_size >= 64 else 1
        size = -(-image_size // self.stem_stride)
        self.strides: list[int] = []
        for _ in self.stages:
            stride = 2 if size > 4 else 1
            self.strides.append(stride)
            size = -(-size // stride)

    @classmethod
    def for_data(cls, data: Any, **options: Any) -> ElasticCNN:
        """The space for a :class:`sconce.Data`: its input channels, image size and classes.

        Example:
            >>> ElasticCNN.for_data(data).num_classes  # doctest: +SKIP
            10
        """
        shape = tuple(data.input_shape or ())
        if len(shape) != 3 or not data.num_classes:
            raise ConfigError(f"elastic-cnn needs images (channels, height, width) and a class "
                              f"count; the data has inputs of shape {shape} and "
                              f"{data.num_classes} classes")
        return cls(in_channels=int(shape[0]), image_size=int(max(shape[1:])),
                   num_classes=int(data.num_classes), **options)

    def spec(self) -> dict[str, Any]:
        return {"in_channels": self.in_channels, "image_size": self.image_size,
                "num_classes": self.num_classes, "stages": [list(s) for s in self.stages],
                "widths": list(self.widths), "kernels": list(self.kernels),
                "expansions": list(self.expansions), "block": self.block,
                "stem_channels": self.stem_channels,
                "head_channels": self.head_channels}

    def dimensions(self) -> tuple[Dimension, ...]:
        dims = []
        for index, (_, depth) in enumerate(self.stages, start=1):
            dims += [Dimension(f"stage{index}.width", self.widths),
                     Dimension(f"stage{index}.depth", tuple(range(1, depth + 1))),
                     Dimension(f"stage{index}.kernel", self.kernels),
                     Dimension(f"stage{index}.expansion", self.expansions)]
        return tuple(dims)

    def build(self, choice: Mapping[str, Any]) -> nn.Module:
        choice = self.check(choice)
        stem = ConvBNAct(self.in_channels, self.stem_channels, 3, stride=self.stem_stride)
        channels = self.stem_channels
        block_type = FusedMBConv if self.block == "fused" else MBConv
        stages = []
        for index, ((base, _), stride) in enumerate(zip(self.stages, self.strides, strict=True),
                                                    start=1):
            width = round_channels(base * choice[f"stage{index}.width"])
            blocks = []
            for block in range(choice[f"stage{index}.depth"]):
                blocks.append(block_type(channels, width,
                                         expansion=choice[f"stage{index}.expansion"],
                                         kernel_size=choice[f"stage{index}.kernel"],
                                         stride=stride if block == 0 else 1))
                channels = width
            stages.append(nn.Sequential(*blocks))
        model = ElasticNet(stem, stages, Head(channels, self.head_channels, self.num_classes))
        _initialise(model)
        return model

    def latency_units(self, model: nn.Module) -> list[nn.Module]:
        """The stem, every block and the head."""
        if not isinstance(model, ElasticNet):
            return super().latency_units(model)
        return [model.stem, *(block for stage in model.stages.children()
                               for block in stage.children()), model.head]


def _ascending(name: str, values: Sequence[Any], kind: type) -> tuple[Any, ...]:
    out = tuple(kind(v) for v in values)
    if not out or any(v <= 0 for v in out) or list(out) != sorted(set(out)):
        raise ConfigError(f"elastic-cnn: {name} must be distinct positive values, smallest "
                          f"first, got {list(values)!r}")
    return out


def _initialise(model: nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, 0.0, 0.01)
            nn.init.zeros_(module.bias)


register_family(ElasticCNN.family, ElasticCNN)
