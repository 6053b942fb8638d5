"""sconce-prune: pruning techniques for sconce, discovered through the ``sconce`` entry point."""

from __future__ import annotations

__version__ = "0.1.0"
