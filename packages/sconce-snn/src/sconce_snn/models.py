"""A convolutional spiking network in the style of the snnTorch tutorials.

``Conv5x5 -> MaxPool2 -> Leaky -> Conv5x5 -> MaxPool2 -> Leaky -> Flatten -> Linear -> Leaky``
with ``beta = 0.5``, the fast-sigmoid surrogate gradient (slope 25) and every neuron keeping
its own state (``init_hidden=True``): the model computes one time step per call and the
output neuron returns ``(spikes, membrane)``. Registered as the model ``snn-cnn``.

Example:
    >>> import torch
    >>> model = spiking_cnn(num_classes=10, in_channels=1, image_size=28)
    >>> spikes, membrane = model(torch.randn(2, 1, 28, 28))
    >>> spikes.shape
    torch.Size([2, 10])
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["SpikingCNN", "spiking_cnn"]


class SpikingCNN(nn.Module):
    """The tutorial-style convolutional SNN (see the module docstring).

    Args:
        num_classes: output neurons.
        in_channels: input image channels.
        image_size: input height and width.
        widths: output channels of the two convolutions.
        beta: membrane decay of every Leaky neuron.
        padding: convolution padding; None: 0 (valid convolutions, as in the tutorials) for
            images of at least 16 pixels, else 2 (so small images such as 8x8 digits fit).

    Raises:
        ValueError: the image is too small for the two conv-pool stages.

    Example:
        >>> SpikingCNN(image_size=28).fc.in_features
        1024
    """

    def __init__(self, *, num_classes: int = 10, in_channels: int = 1, image_size: int = 28,
                 widths: Sequence[int] = (12, 64), beta: float = 0.5,
                 padding: int | None = None) -> None:
        super().__init__()
        import snntorch as snn
        from snntorch import surrogate

        if len(widths) != 2 or any(int(w) < 1 for w in widths):
            raise ValueError(f"widths must be two positive channel counts, got {widths!r}")
        pad = padding if padding is not None else (0 if image_size >= 16 else 2)
        size = image_size
        for _ in range(2):
            size = (size + 2 * pad - 4) // 2
        if size < 1:
            raise ValueError(f"image_size={image_size} is too small for two 5x5 conv + 2x2 "
                             "pool stages; give padding=2")
        grad = surrogate.fast_sigmoid(slope=25)
        first, second = int(widths[0]), int(widths[1])
        self.conv1 = nn.Conv2d(in_channels, first, 5, padding=pad)
        self.pool1 = nn.MaxPool2d(2)
        self.lif1 = snn.Leaky(beta=beta, spike_grad=grad, init_hidden=True)
        self.conv2 = nn.Conv2d(first, second, 5, padding=pad)
        self.pool2 = nn.MaxPool2d(2)
        self.lif2 = snn.Leaky(beta=beta, spike_grad=grad, init_hidden=True)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(second * size * size, num_classes)
        self.lif3 = snn.Leaky(beta=beta, spike_grad=grad, init_hidden=True, output=True)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One time step: ``(output spikes, output membrane)``."""
        x = self.lif1(self.pool1(self.conv1(x)))
        x = self.lif2(self.pool2(self.conv2(x)))
        return self.lif3(self.fc(self.flatten(x)))


def spiking_cnn(*, num_classes: int = 10, in_channels: int = 1, image_size: int = 28,
                widths: Sequence[int] = (12, 64), beta: float = 0.5) -> SpikingCNN:
    """The tutorial-style convolutional SNN for ``in_channels x image_size^2`` inputs.

    Example:
        >>> spiking_cnn(in_channels=1, image_size=8).conv1.padding
        (2, 2)
    """
    return SpikingCNN(num_classes=num_classes, in_channels=in_channels,
                      image_size=image_size, widths=widths, beta=beta)
