"""MobileNetV2: inverted residual blocks with linear bottlenecks."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from sconce.models._layers import check_shape_args, conv_bn_act, init_conv_bn

__all__ = ["MOBILENET_V2_SETTINGS", "InvertedResidual", "MobileNetV2", "mobilenet_v2"]

MOBILENET_V2_SETTINGS: tuple[tuple[int, int, int, int], ...] = (
    # expand ratio t, output channels c, repeats n, first stride s
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
"""The standard MobileNetV2 stage table (at ``width_mult=1.0``)."""


def _make_divisible(value: float, divisor: int = 8) -> int:
    """Round ``value`` to the nearest multiple of ``divisor``, losing at most 10%.

    Args:
        value: Channel count to round.
        divisor: Required divisor.

    Returns:
        The rounded channel count, at least ``divisor``.

    Example:
        >>> _make_divisible(32 * 0.35)
        16
    """
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


class InvertedResidual(nn.Module):
    """Expand (1x1) -> depthwise (3x3) -> project (1x1), with a residual add.

    ``block`` is an ``nn.Sequential`` of conv-bn-relu6 blocks: the 1x1
    expansion (omitted when ``expand_ratio == 1``), the 3x3 depthwise conv,
    then the linear 1x1 projection (conv-bn, no activation). The input is
    added to the output when ``stride == 1`` and the channel count is kept.

    Args:
        in_channels: Input channels.
        out_channels: Output channels.
        stride: Stride of the depthwise conv (1 or 2).
        expand_ratio: Hidden channels as a multiple of ``in_channels``.

    Example:
        >>> block = InvertedResidual(16, 16, stride=1, expand_ratio=6)
        >>> block.use_residual, block(torch.randn(1, 16, 8, 8)).shape
        (True, torch.Size([1, 16, 8, 8]))
    """

    def __init__(
        self, in_channels: int, out_channels: int, stride: int, expand_ratio: int
    ) -> None:
        super().__init__()
        hidden = in_channels * expand_ratio
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(
                conv_bn_act(in_channels, hidden, kernel_size=1, activation=nn.ReLU6)
            )
        layers += [
            conv_bn_act(
                hidden, hidden, stride=stride, groups=hidden, activation=nn.ReLU6
            ),
            conv_bn_act(hidden, out_channels, kernel_size=1, activation=None),
        ]
        self.block = nn.Sequential(*layers)
        self.use_residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block.

        Args:
            x: Input of shape ``(batch, in_channels, h, w)``.

        Returns:
            Output of shape ``(batch, out_channels, ceil(h / stride),
            ceil(w / stride))``.

        Example:
            >>> block = InvertedResidual(8, 16, stride=2, expand_ratio=6)
            >>> block(torch.randn(1, 8, 8, 8)).shape
            torch.Size([1, 16, 4, 4])
        """
        out = self.block(x)
        return out + x if self.use_residual else out


class MobileNetV2(nn.Module):
    """MobileNetV2 following :data:`MOBILENET_V2_SETTINGS`.

    ``features`` is the 3x3 stem conv-bn-relu6, the inverted residual blocks
    and a final 1x1 conv-bn-relu6 to ``last_channels``; the classifier is
    global average pooling, flatten, dropout and a linear layer. Channel
    counts are scaled by ``width_mult`` and rounded to multiples of 8.
    For small inputs the stem and the first stride-2 stage use stride 1,
    giving 8x instead of 32x total downsampling (28x28 ends at 4x4).

    Args:
        num_classes: Number of output classes.
        in_channels: Number of input image channels.
        image_size: Height and width of the input images.
        width_mult: Channel multiplier (1.0 is the standard model).
        small_input: Reduce the early strides; defaults to
            ``image_size < 64``.
        dropout: Dropout probability before the linear layer (off by
            default).

    Raises:
        ValueError: If ``width_mult <= 0`` or ``dropout`` is outside
            ``[0, 1)``.

    Example:
        >>> model = MobileNetV2(in_channels=1, image_size=28, width_mult=0.5)
        >>> model(torch.randn(2, 1, 28, 28)).shape
        torch.Size([2, 10])
    """

    def __init__(
        self,
        *,
        num_classes: int = 10,
        in_channels: int = 3,
        image_size: int = 32,
        width_mult: float = 1.0,
        small_input: bool | None = None,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        check_shape_args(num_classes, in_channels, image_size)
        if not width_mult > 0:
            raise ValueError(
                "width_mult must be > 0 (1.0 is the standard width), "
                f"got {width_mult!r}"
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(
                f"dropout must be in [0, 1) (0 disables it), got {dropout!r}"
            )
        if small_input is None:
            small_input = image_size < 64
        channels = _make_divisible(32 * width_mult)
        layers: list[nn.Module] = [
            conv_bn_act(
                in_channels,
                channels,
                stride=1 if small_input else 2,
                activation=nn.ReLU6,
            )
        ]
        keep_next_stride2 = (
            small_input  # small inputs: first stride-2 stage keeps resolution
        )
        for expand_ratio, width, repeats, first_stride in MOBILENET_V2_SETTINGS:
            out_channels = _make_divisible(width * width_mult)
            stride = first_stride
            if stride == 2 and keep_next_stride2:
                stride, keep_next_stride2 = 1, False
            for index in range(repeats):
                layers.append(
                    InvertedResidual(
                        channels,
                        out_channels,
                        stride if index == 0 else 1,
                        expand_ratio,
                    )
                )
                channels = out_channels
        self.last_channels = _make_divisible(1280 * max(1.0, width_mult))
        layers.append(
            conv_bn_act(
                channels, self.last_channels, kernel_size=1, activation=nn.ReLU6
            )
        )
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Dropout(dropout),
            nn.Linear(self.last_channels, num_classes),
        )
        init_conv_bn(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Classify a batch of images.

        Args:
            x: Images of shape ``(batch, in_channels, image_size, image_size)``.

        Returns:
            Logits of shape ``(batch, num_classes)``.

        Example:
            >>> MobileNetV2(width_mult=0.25)(torch.randn(1, 3, 32, 32)).shape
            torch.Size([1, 10])
        """
        return self.classifier(self.features(x))


def mobilenet_v2(
    *,
    num_classes: int = 10,
    in_channels: int = 3,
    image_size: int = 32,
    **overrides: Any,
) -> MobileNetV2:
    """Build a :class:`MobileNetV2`.

    Args:
        num_classes: Number of output classes.
        in_channels: Number of input image channels.
        image_size: Height and width of the input images.
        **overrides: Further :class:`MobileNetV2` keyword arguments
            (``width_mult``, ``small_input``, ``dropout``).

    Returns:
        The model.

    Example:
        >>> model = mobilenet_v2(num_classes=1000, image_size=224)
        >>> sum(p.numel() for p in model.parameters())
        3504872
    """
    return MobileNetV2(
        num_classes=num_classes,
        in_channels=in_channels,
        image_size=image_size,
        **overrides,
    )
