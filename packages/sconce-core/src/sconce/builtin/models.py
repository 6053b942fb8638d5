"""Built-in plugin: the reference models (demo CNN, VGG, ResNet, MobileNetV2, ViT)."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from sconce.hookspecs import hookimpl


@hookimpl
def sconce_register_models(register: Callable[[str, Callable[..., nn.Module]], None]) -> None:
    """Register every factory of :data:`sconce.models.MODEL_FACTORIES` under its name, and
    ``demo``: the demo CNN with weights trained on digits."""
    from sconce.demo import demo_model
    from sconce.models import MODEL_FACTORIES

    for name, factory in MODEL_FACTORIES.items():
        register(name, factory)
    register("demo", demo_model)
