"""sconce-prune: pruning techniques for sconce, discovered through the ``sconce`` entry point.

Techniques: ``prune.gmp`` (gradual magnitude pruning with automatic per-layer sparsity),
``prune.magnitude`` (one-shot), ``prune.nm`` (N:M masks), ``prune.channel``, and the one-shot
second-order pruners ``prune.sparsegpt``, ``prune.obc`` and ``prune.wanda``.

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
from sconce_prune.oneshot import OBC, OBCConfig, SparseGPT, SparseGPTConfig, Wanda, WandaConfig

__version__ = "0.1.0"

__all__ = [
    "OBC", "GMPConfig", "GradualMagnitudePruning", "MagnitudeConfig", "MagnitudePruning",
    "NMConfig", "NMPruning", "OBCConfig", "SparseGPT", "SparseGPTConfig", "Wanda", "WandaConfig",
    "__version__",
]
