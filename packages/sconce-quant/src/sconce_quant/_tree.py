"""Module-tree surgery shared by the techniques."""

from __future__ import annotations

from torch import nn


def replace_module(model: nn.Module, name: str, module: nn.Module) -> None:
    """Put ``module`` at the qualified ``name`` inside ``model`` (in place).

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 2))
        >>> replace_module(net, "0", nn.Identity())
        >>> type(net[0]).__name__
        'Identity'
    """
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)
