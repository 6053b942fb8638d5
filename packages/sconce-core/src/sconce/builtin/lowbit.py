"""Built-in plugin: the true size of the core's low-bit layers (:mod:`sconce.lowbit`)."""

from __future__ import annotations

from torch import nn

from sconce.footprint import Footprint
from sconce.hookspecs import hookimpl
from sconce.lowbit import lowbit_footprint


@hookimpl
def sconce_module_footprint(module: nn.Module) -> Footprint | None:
    """Packed codes, scales and zero points of a :class:`sconce.lowbit.LowBitLinear`.

    Example:
        >>> sconce_module_footprint(nn.ReLU()) is None
        True
    """
    return lowbit_footprint(module)
