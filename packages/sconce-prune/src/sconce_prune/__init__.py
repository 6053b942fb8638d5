"""sconce-prune: pruning techniques for sconce, discovered through the ``sconce`` entry point.

Techniques: ``prune.gmp`` (gradual magnitude pruning with automatic per-layer sparsity),
``prune.magnitude`` (one-shot), ``prune.nm`` (N:M masks) and ``prune.channel``.

Example:
    >>> import sconce
    >>> sconce.get_technique("prune.gmp").Config().allocation
    'auto'
"""

from __future__ import annotations

from sconce_prune.config import GMPConfig, MagnitudeConfig, NMConfig
from sconce_prune.gmp import GradualMagnitudePruning
from sconce_prune.magnitude import MagnitudePruning
from sconce_prune.nm import NMPruning

__version__ = "0.1.0"

__all__ = [
    "GMPConfig", "GradualMagnitudePruning", "MagnitudeConfig", "MagnitudePruning", "NMConfig",
    "NMPruning", "__version__",
]
