"""The ``prune`` plugin: registers the pruning techniques with sconce."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sconce import hookimpl
from sconce_prune.channel import ChannelPruning
from sconce_prune.gmp import GradualMagnitudePruning
from sconce_prune.magnitude import MagnitudePruning
from sconce_prune.nm import NMPruning
from sconce_prune.oneshot import OBC, SparseGPT, Wanda


@hookimpl
def sconce_register_techniques(register: Callable[[Any], None]) -> None:
    """Register every technique this package offers."""
    register(GradualMagnitudePruning())
    register(MagnitudePruning())
    register(NMPruning())
    register(ChannelPruning())
    register(SparseGPT())
    register(OBC())
    register(Wanda())
