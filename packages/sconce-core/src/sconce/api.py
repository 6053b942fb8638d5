"""Looking up installed techniques.

Example:
    >>> [t.name for t in list_techniques("nothing.*")]
    []
"""

from __future__ import annotations

import fnmatch
from typing import Any

from sconce.plugins import registry


def list_techniques(pattern: str = "*") -> list[Any]:
    """Installed techniques whose name matches the glob ``pattern``, sorted by name.

    Example:
        >>> list_techniques("prune.*")  # doctest: +SKIP
        [<technique prune.gmp (prune)>, ...]
    """
    techniques = registry().techniques
    return [techniques[name] for name in sorted(techniques) if fnmatch.fnmatch(name, pattern)]


def get_technique(name: str) -> Any:
    """The technique registered as ``name``; an unknown name lists the close matches.

    Example:
        >>> get_technique("prune.gmq")  # doctest: +SKIP
        Traceback (most recent call last):
        sconce.errors.UnknownNameError: unknown technique 'prune.gmq'; did you mean 'prune.gmp'?
    """
    return registry().lookup("techniques", name, "see `sconce techniques`")
