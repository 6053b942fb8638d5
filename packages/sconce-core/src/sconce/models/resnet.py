"""ResNets with basic blocks (ResNet-18 and a general form)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from sconce.models._layers import (
    check_positive_int,
    check_shape_args,
    conv_bn_act,
    init_conv_bn,
)

__all__ = ["BasicBlock", "ResNet", "resnet", "resnet18"]


class BasicBlock(nn.Module):
    """Two 3x3 conv-bn layers with an identity or 1x1 conv-bn shortcut.

    ``conv1`` is conv-bn-relu and ``conv2`` conv-bn (each an
    ``nn.Sequential``); the shortcut is a 1x1 conv-bn ``nn.Sequential`` when
    the stride or the channel count changes, else ``None``. The output is
    ``relu(conv2(conv1(x)) + shortcut(x))``.

    Args:
        in_channels: Input channels.
        out_channels: Output channels.
        stride: Stride of ``conv1`` and of the shortcut (1 or 2).

    Example:
        >>> block = BasicBlock(64, 128, stride=2)
        >>> block(torch.randn(1, 64, 8, 8)).shape
        torch.Size([1, 128, 4, 4])
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = conv_bn_act(in_channels, out_channels, stride=stride)
        self.conv2 = conv_bn_act(out_channels, out_channels, activation=None)
        self.shortcut = (
            conv_bn_act(
                in_channels, out_channels, kernel_size=1, stride=stride, activation=None
            )
            if stride != 1 or in_channels != out_channels
            else None
        )
        self.relu = nn.ReLU(inplace=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block.

        Args:
            x: Input of shape ``(batch, in_channels, h, w)``.

        Returns:
            Output of shape ``(batch, out_channels, ceil(h / stride),
            ceil(w / stride))``.

        Example:
            >>> BasicBlock(8, 8)(torch.randn(1, 8, 4, 4)).shape
            torch.Size([1, 8, 4, 4])
        """
        identity = x if self.shortcut is None else self.shortcut(x)
        out = self.conv2(self.conv1(x))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """ResNet of :class:`BasicBlock` stages.

    Stage ``i`` has ``depths[i]`` blocks of width ``widths[i]``; every stage
    after the first starts with a stride-2 block. The stem is the ImageNet
    one (7x7 stride-2 conv-bn-relu, 3x3 stride-2 max-pool) or, for small
    inputs, a CIFAR-style 3x3 stride-1 conv-bn-relu without pooling. The head
    is global average pooling and a linear layer.

    Args:
        num_classes: Number of output classes.
        in_channels: Number of input image channels.
        image_size: Height and width of the input images.
        depths: Blocks per stage.
        widths: Channels per stage (the stem outputs ``widths[0]``).
        small_input: Use the CIFAR-style stem; defaults to
            ``image_size < 64``.

    Raises:
        ValueError: If ``depths`` and ``widths`` are empty, differ in length or
            hold non-positive values.

    Example:
        >>> model = ResNet(depths=(1, 1), widths=(16, 32), image_size=32)
        >>> model(torch.randn(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """

    def __init__(
        self,
        *,
        num_classes: int = 10,
        in_channels: int = 3,
        image_size: int = 32,
        depths: Sequence[int] = (2, 2, 2, 2),
        widths: Sequence[int] = (64, 128, 256, 512),
        small_input: bool | None = None,
    ) -> None:
        super().__init__()
        check_shape_args(num_classes, in_channels, image_size)
        if len(depths) == 0 or len(depths) != len(widths):
            raise ValueError(
                "depths and widths must be non-empty and of equal length "
                "(one entry per stage), "
                f"got depths={tuple(depths)!r} and widths={tuple(widths)!r}"
            )
        for name, values in (("depths", depths), ("widths", widths)):
            for value in values:
                check_positive_int(f"every entry of {name}", value)
        if small_input is None:
            small_input = image_size < 64
        if small_input:
            self.stem = conv_bn_act(in_channels, widths[0])
        else:
            self.stem = nn.Sequential(
                conv_bn_act(in_channels, widths[0], kernel_size=7, stride=2),
                nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
            )
        stages: list[nn.Module] = []
        channels = widths[0]
        for index, (depth, width) in enumerate(zip(depths, widths, strict=True)):
            blocks = [BasicBlock(channels, width, stride=1 if index == 0 else 2)]
            blocks += [BasicBlock(width, width) for _ in range(depth - 1)]
            stages.append(nn.Sequential(*blocks))
            channels = width
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(channels, num_classes)
        init_conv_bn(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Classify a batch of images.

        Args:
            x: Images of shape ``(batch, in_channels, image_size, image_size)``.

        Returns:
            Logits of shape ``(batch, num_classes)``.

        Example:
            >>> ResNet(depths=(1,), widths=(8,))(torch.randn(1, 3, 32, 32)).shape
            torch.Size([1, 10])
        """
        return self.fc(self.flatten(self.pool(self.stages(self.stem(x)))))


def resnet(
    *,
    num_classes: int = 10,
    in_channels: int = 3,
    image_size: int = 32,
    depths: Sequence[int] = (2, 2, 2, 2),
    widths: Sequence[int] = (64, 128, 256, 512),
    **overrides: Any,
) -> ResNet:
    """Build a :class:`ResNet` with any number of basic-block stages.

    Args:
        num_classes: Number of output classes.
        in_channels: Number of input image channels.
        image_size: Height and width of the input images.
        depths: Blocks per stage.
        widths: Channels per stage.
        **overrides: Further :class:`ResNet` keyword arguments
            (``small_input``).

    Returns:
        The model.

    Example:
        >>> model = resnet(depths=(1, 1, 1), widths=(16, 32, 64), image_size=28)
        >>> model(torch.randn(1, 3, 28, 28)).shape
        torch.Size([1, 10])
    """
    return ResNet(
        num_classes=num_classes,
        in_channels=in_channels,
        image_size=image_size,
        depths=depths,
        widths=widths,
        **overrides,
    )


def resnet18(
    *,
    num_classes: int = 10,
    in_channels: int = 3,
    image_size: int = 32,
    **overrides: Any,
) -> ResNet:
    """Build ResNet-18 (``depths=(2, 2, 2, 2)``, ``widths=(64, 128, 256, 512)``).

    With ``image_size >= 64`` this is the standard ImageNet architecture;
    smaller inputs get the CIFAR-style stem.

    Args:
        num_classes: Number of output classes.
        in_channels: Number of input image channels.
        image_size: Height and width of the input images.
        **overrides: Further :class:`ResNet` keyword arguments
            (``small_input``).

    Returns:
        The model.

    Example:
        >>> model = resnet18(num_classes=1000, image_size=224)
        >>> sum(p.numel() for p in model.parameters())
        11689512
    """
    return ResNet(
        num_classes=num_classes,
        in_channels=in_channels,
        image_size=image_size,
        **overrides,
    )
