"""Building blocks and argument checks shared by the model zoo."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

__all__ = ["check_positive_int", "check_shape_args", "conv_bn_act", "init_conv_bn"]


def check_positive_int(name: str, value: object) -> None:
    """Raise ``ValueError`` unless ``value`` is an ``int`` of at least 1.

    Args:
        name: Argument name used in the error message.
        value: Value to check.

    Raises:
        ValueError: If ``value`` is not a positive integer.

    Example:
        >>> check_positive_int("num_classes", 10)
        >>> check_positive_int("num_classes", 0)
        Traceback (most recent call last):
        ...
        ValueError: num_classes must be a positive integer, got 0
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def check_shape_args(num_classes: int, in_channels: int, image_size: int) -> None:
    """Validate the dataset-shape arguments every factory accepts.

    Args:
        num_classes: Number of output classes.
        in_channels: Number of input image channels.
        image_size: Height and width of the (square) input images.

    Raises:
        ValueError: If any argument is not a positive integer.

    Example:
        >>> check_shape_args(num_classes=10, in_channels=1, image_size=28)
    """
    check_positive_int("num_classes", num_classes)
    check_positive_int("in_channels", in_channels)
    check_positive_int("image_size", image_size)


def conv_bn_act(
    in_channels: int,
    out_channels: int,
    *,
    kernel_size: int = 3,
    stride: int = 1,
    groups: int = 1,
    activation: Callable[[], nn.Module] | None = nn.ReLU,
) -> nn.Sequential:
    """Build ``Conv2d -> BatchNorm2d [-> activation]`` as sibling modules.

    The convolution has no bias (the batch norm provides it) and "same"
    padding, so only ``stride`` changes the spatial size. Keeping the layers as
    children ``0``, ``1`` and ``2`` of one ``nn.Sequential`` lets
    ``torch.ao.quantization.fuse_modules`` address them by name.

    Args:
        in_channels: Input channels.
        out_channels: Output channels.
        kernel_size: Odd square kernel size.
        stride: Convolution stride.
        groups: Convolution groups (``groups == in_channels`` for depthwise).
        activation: Zero-argument callable returning the activation module,
            or ``None`` for no activation.

    Returns:
        The ``nn.Sequential`` block.

    Example:
        >>> block = conv_bn_act(3, 16)
        >>> [type(m).__name__ for m in block]
        ['Conv2d', 'BatchNorm2d', 'ReLU']
    """
    layers: list[nn.Module] = [
        nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=kernel_size // 2,
            groups=groups,
            bias=False,
        ),
        nn.BatchNorm2d(out_channels),
    ]
    if activation is not None:
        layers.append(activation())
    return nn.Sequential(*layers)


def init_conv_bn(model: nn.Module) -> None:
    """Initialise convolutions (Kaiming, fan-out) and batch norms (1, 0).

    Args:
        model: Model whose ``Conv2d`` and ``BatchNorm2d`` layers are reset in
            place; other layers keep PyTorch's default initialisation.

    Example:
        >>> net = conv_bn_act(3, 8)
        >>> init_conv_bn(net)
        >>> bool((net[1].weight == 1).all())
        True
    """
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
