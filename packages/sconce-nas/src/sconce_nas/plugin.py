"""The ``nas`` plugin: the ``nas.search`` technique, the ``elastic-cnn`` model, ``sconce nas``.

Nothing heavy is imported here: the technique's module loads when the core asks for
techniques, and the command's dependencies only when ``sconce nas`` runs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from sconce import hookimpl


def elastic_cnn(*, num_classes: int = 10, in_channels: int = 3, image_size: int = 32
                ) -> nn.Module:
    """The largest member of the default elastic CNN for this data shape (untrained).

    Example:
        >>> sum(p.numel() for p in elastic_cnn(in_channels=1, image_size=28).parameters()) > 0
        True
    """
    from sconce_nas.elastic import ElasticCNN

    space = ElasticCNN(in_channels=in_channels, image_size=image_size, num_classes=num_classes)
    return space.build(space.largest())


@hookimpl
def sconce_register_techniques(register: Callable[[Any], None]) -> None:
    """Register ``nas.search``.

    Example:
        >>> names = []
        >>> sconce_register_techniques(lambda technique: names.append(technique.name))
        >>> names
        ['nas.search']
    """
    from sconce_nas.technique import NASSearch

    register(NASSearch())


@hookimpl
def sconce_register_models(register: Callable[[str, Callable[..., nn.Module]], None]) -> None:
    """Register ``elastic-cnn``: the family's largest member, so saved searches load by name.

    Example:
        >>> names = []
        >>> sconce_register_models(lambda name, factory: names.append(name))
        >>> names
        ['elastic-cnn']
    """
    register("elastic-cnn", elastic_cnn)


@hookimpl
def sconce_register_commands(cli: Any) -> None:
    """Add ``sconce nas``."""
    from sconce_nas.cli import nas

    cli.add_command(nas)
