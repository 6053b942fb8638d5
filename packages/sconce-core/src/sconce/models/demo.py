"""A small CNN sized for the built-in demo (scikit-learn digits, 1x8x8)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from sconce.models._layers import (
    check_positive_int,
    check_shape_args,
    conv_bn_act,
)

__all__ = ["DemoCNN", "demo_cnn"]


class DemoCNN(nn.Module):
    """Three conv-bn-relu blocks, one max-pool, global pooling and an MLP head.

    Layout: ``conv(in, 16)``, ``conv(16, 32)``, ``maxpool 2``, ``conv(32, 64)``,
    global average pool, ``Linear(64, hidden_features)``, ReLU,
    ``Linear(hidden_features, num_classes)``. Global pooling makes the head
    independent of the input size, so any ``image_size >= 2`` works. Layers
    keep PyTorch's default initialisation, which trains fastest here.

    Args:
        num_classes: Number of output classes.
        in_channels: Number of input image channels.
        image_size: Height and width of the input images (at least 2, for
            the max-pool).
        hidden_features: Width of the hidden classifier layer.

    Raises:
        ValueError: If an argument is not a positive integer or
            ``image_size < 2``.

    Example:
        >>> model = DemoCNN(num_classes=10, in_channels=1, image_size=8)
        >>> model(torch.randn(2, 1, 8, 8)).shape
        torch.Size([2, 10])
    """

    def __init__(
        self,
        *,
        num_classes: int = 10,
        in_channels: int = 3,
        image_size: int = 32,
        hidden_features: int = 64,
    ) -> None:
        super().__init__()
        check_shape_args(num_classes, in_channels, image_size)
        if image_size < 2:
            raise ValueError(
                "DemoCNN needs image_size >= 2 for its 2x2 max-pool, "
                f"got {image_size}; resize the inputs to at least 2x2"
            )
        check_positive_int("hidden_features", hidden_features)
        self.features = nn.Sequential(
            conv_bn_act(in_channels, 16),
            conv_bn_act(16, 32),
            nn.MaxPool2d(2),
            conv_bn_act(32, 64),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(64, hidden_features),
            nn.ReLU(inplace=False),
            nn.Linear(hidden_features, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Classify a batch of images.

        Args:
            x: Images of shape ``(batch, in_channels, image_size, image_size)``.

        Returns:
            Logits of shape ``(batch, num_classes)``.

        Example:
            >>> DemoCNN(in_channels=1, image_size=8)(torch.randn(1, 1, 8, 8)).shape
            torch.Size([1, 10])
        """
        return self.classifier(self.pool(self.features(x)))


def demo_cnn(
    *,
    num_classes: int = 10,
    in_channels: int = 3,
    image_size: int = 32,
    **overrides: Any,
) -> DemoCNN:
    """Build a :class:`DemoCNN` for the given dataset shape.

    Args:
        num_classes: Number of output classes.
        in_channels: Number of input image channels.
        image_size: Height and width of the input images.
        **overrides: Further :class:`DemoCNN` keyword arguments
            (``hidden_features``).

    Returns:
        The model.

    Example:
        >>> model = demo_cnn(in_channels=1, image_size=8)
        >>> sum(p.numel() for p in model.parameters())
        28218
    """
    return DemoCNN(
        num_classes=num_classes,
        in_channels=in_channels,
        image_size=image_size,
        **overrides,
    )
