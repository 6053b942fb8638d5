"""The ``sparse`` plugin: registers ``sparse.engine`` and ``sparse.storage`` and the true-size
hook of the sparse layers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from sconce import Footprint, hookimpl
from sconce_sparse.engine import SparseEngine
from sconce_sparse.footprint import sparse_footprint
from sconce_sparse.storage import SparseStorage


@hookimpl
def sconce_register_techniques(register: Callable[[Any], None]) -> None:
    """Register every technique this package offers.

    Example:
        >>> names = []
        >>> sconce_register_techniques(lambda technique: names.append(technique.name))
        >>> names
        ['sparse.engine', 'sparse.storage']
    """
    register(SparseEngine())
    register(SparseStorage())


@hookimpl
def sconce_module_footprint(module: nn.Module) -> Footprint | None:
    """True storage of the sparse layers (compressed weights), None for other modules.

    Example:
        >>> sconce_module_footprint(nn.ReLU()) is None
        True
    """
    return sparse_footprint(module)
