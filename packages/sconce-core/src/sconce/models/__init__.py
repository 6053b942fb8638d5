"""Reference model zoo: small, traceable CNNs and a ViT for compression experiments.

Every factory takes keyword-only ``num_classes``, ``in_channels`` and
``image_size`` (plus model-specific ``**overrides``), so a model can be built
from a dataset's shape alone. All models are plain ``nn.Module`` s made of
standard layers, traceable by ``torch.fx.symbolic_trace`` and
``torch.export.export``; conv/bn/activation triples are sibling modules in an
``nn.Sequential`` so eager-mode quantization can fuse them by name.

Example:
    >>> import torch
    >>> from sconce.models import MODEL_FACTORIES
    >>> factory = MODEL_FACTORIES["resnet18"]
    >>> model = factory(num_classes=10, in_channels=1, image_size=28)
    >>> model(torch.randn(2, 1, 28, 28)).shape
    torch.Size([2, 10])
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from sconce.models.demo import DemoCNN, demo_cnn
from sconce.models.mobilenet import InvertedResidual, MobileNetV2, mobilenet_v2
from sconce.models.resnet import BasicBlock, ResNet, resnet, resnet18
from sconce.models.vgg import VGG, VGG16_WIDTHS, VGG_DEFAULT_WIDTHS, vgg, vgg16
from sconce.models.vit import EncoderBlock, ViT, vit

__all__ = [
    "MODEL_FACTORIES",
    "VGG",
    "VGG16_WIDTHS",
    "VGG_DEFAULT_WIDTHS",
    "BasicBlock",
    "DemoCNN",
    "EncoderBlock",
    "InvertedResidual",
    "MobileNetV2",
    "ResNet",
    "ViT",
    "demo_cnn",
    "mobilenet_v2",
    "resnet",
    "resnet18",
    "vgg",
    "vgg16",
    "vit",
]

MODEL_FACTORIES: dict[str, Callable[..., nn.Module]] = {
    "demo-cnn": demo_cnn,
    "vgg": vgg,
    "vgg16": vgg16,
    "resnet18": resnet18,
    "mobilenetv2": mobilenet_v2,
    "vit": vit,
}
"""Registry name -> factory taking ``num_classes``, ``in_channels``, ``image_size``."""
