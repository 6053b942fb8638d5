"""VGG-style networks with batch norm: a small default and VGG-16."""

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

__all__ = ["VGG", "VGG16_WIDTHS", "VGG_DEFAULT_WIDTHS", "vgg", "vgg16"]

Width = int | str
"""A conv width (output channels of a 3x3 conv-bn-relu) or ``"M"`` (2x2 max-pool)."""

VGG_DEFAULT_WIDTHS: tuple[Width, ...] = (32, "M", 64, 64, "M", 128, 128, "M")
"""Default widths of :func:`vgg`: five convs, three pools.

Reaches about 93% on Fashion-MNIST (28x28) after three epochs.
"""

VGG16_WIDTHS: tuple[Width, ...] = (
    64, 64, "M",
    128, 128, "M",
    256, 256, 256, "M",
    512, 512, 512, "M",
    512, 512, 512, "M",
)  # fmt: skip
"""The 13-conv configuration "D" of VGG-16."""


class VGG(nn.Module):
    """Stack of 3x3 conv-bn-relu blocks and max-pools, then an MLP classifier.

    ``features`` holds one child per ``widths`` entry: a conv-bn-relu
    ``nn.Sequential`` for an ``int``, an ``nn.MaxPool2d(2)`` for ``"M"``.
    The classifier is ``Flatten -> Linear(c * s * s, hidden_features) -> ReLU
    -> Linear(hidden_features, num_classes)``, where ``c`` is the last conv
    width and ``s`` the image size after the pools (floored at each pool).

    Args:
        num_classes: Number of output classes.
        in_channels: Number of input image channels.
        image_size: Height and width of the input images; at least
            ``2 ** (number of "M" entries)``.
        widths: Conv widths and ``"M"`` pool markers, in order; at least one
            conv.
        hidden_features: Width of the hidden classifier layer.

    Raises:
        ValueError: If ``widths`` holds something other than positive ints
            and ``"M"``, has no conv, or pools ``image_size`` down to zero.

    Example:
        >>> model = VGG(num_classes=10, in_channels=1, image_size=28)
        >>> model(torch.randn(2, 1, 28, 28)).shape
        torch.Size([2, 10])
    """

    def __init__(
        self,
        *,
        num_classes: int = 10,
        in_channels: int = 3,
        image_size: int = 32,
        widths: Sequence[Width] = VGG_DEFAULT_WIDTHS,
        hidden_features: int = 256,
    ) -> None:
        super().__init__()
        check_shape_args(num_classes, in_channels, image_size)
        check_positive_int("hidden_features", hidden_features)
        if isinstance(widths, str) or not isinstance(widths, Sequence):
            raise ValueError(
                f"widths must be a sequence of ints and 'M', got {widths!r}; "
                "e.g. widths=[32, 'M', 64, 'M']"
            )
        for width in widths:
            if width != "M" and (
                isinstance(width, bool) or not isinstance(width, int) or width < 1
            ):
                raise ValueError(
                    "widths entries must be positive ints (conv widths) or "
                    "'M' (max-pool), "
                    f"got {width!r} in {list(widths)!r}"
                )
        if not any(width != "M" for width in widths):
            raise ValueError(
                f"widths must contain at least one conv width, got {list(widths)!r}"
            )
        num_pools = sum(width == "M" for width in widths)
        if image_size < 2**num_pools:
            raise ValueError(
                f"image_size={image_size} is too small for {num_pools} max-pools "
                f"(needs at least {2**num_pools}); remove some 'M' entries from widths "
                "or use larger images"
            )
        layers: list[nn.Module] = []
        channels, size = in_channels, image_size
        for width in widths:
            if width == "M":
                layers.append(nn.MaxPool2d(2))
                size //= 2
            else:
                layers.append(conv_bn_act(channels, int(width)))
                channels = int(width)
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(channels * size * size, hidden_features),
            nn.ReLU(inplace=False),
            nn.Linear(hidden_features, num_classes),
        )
        init_conv_bn(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Classify a batch of images.

        Args:
            x: Images of shape ``(batch, in_channels, image_size, image_size)``.

        Returns:
            Logits of shape ``(batch, num_classes)``.

        Example:
            >>> VGG(image_size=32)(torch.randn(1, 3, 32, 32)).shape
            torch.Size([1, 10])
        """
        return self.classifier(self.features(x))


def vgg(
    *,
    num_classes: int = 10,
    in_channels: int = 3,
    image_size: int = 32,
    **overrides: Any,
) -> VGG:
    """Build the small default :class:`VGG` (:data:`VGG_DEFAULT_WIDTHS`).

    Args:
        num_classes: Number of output classes.
        in_channels: Number of input image channels.
        image_size: Height and width of the input images (at least 8 with the
            default widths).
        **overrides: Further :class:`VGG` keyword arguments (``widths``,
            ``hidden_features``).

    Returns:
        The model.

    Example:
        >>> model = vgg(in_channels=1, image_size=28)
        >>> sum(p.numel() for p in model.parameters())
        575338
    """
    return VGG(
        num_classes=num_classes,
        in_channels=in_channels,
        image_size=image_size,
        **overrides,
    )


def vgg16(
    *,
    num_classes: int = 10,
    in_channels: int = 3,
    image_size: int = 32,
    **overrides: Any,
) -> VGG:
    """Build a VGG-16 with batch norm (:data:`VGG16_WIDTHS`).

    VGG-16 pools five times; for images smaller than 32 pixels the trailing
    pools that would shrink the feature map below 1x1 are dropped, so e.g.
    28x28 inputs end at 1x1 after four pools. The classifier is the compact
    :class:`VGG` head, not the original 4096-wide one.

    Args:
        num_classes: Number of output classes.
        in_channels: Number of input image channels.
        image_size: Height and width of the input images.
        **overrides: Further :class:`VGG` keyword arguments
            (``hidden_features``); ``widths`` is fixed.

    Returns:
        The model.

    Example:
        >>> model = vgg16(in_channels=1, image_size=28)
        >>> sum(isinstance(m, nn.Conv2d) for m in model.modules())
        13
    """
    check_positive_int("image_size", image_size)
    widths = list(VGG16_WIDTHS)
    max_pools = image_size.bit_length() - 1  # floor(log2(image_size))
    while sum(width == "M" for width in widths) > max_pools:
        last_pool = len(widths) - 1 - widths[::-1].index("M")
        del widths[last_pool]
    return VGG(
        num_classes=num_classes,
        in_channels=in_channels,
        image_size=image_size,
        widths=widths,
        **overrides,
    )
