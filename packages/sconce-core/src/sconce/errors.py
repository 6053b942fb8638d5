"""The sconce error hierarchy.

Every mistake a user can make raises a subclass of :class:`SconceError` whose message says
what was wrong and what to do about it. The CLI prints such errors as one line and exits
non-zero; anything else is a bug and keeps its traceback.

Example:
    >>> from sconce.errors import UnknownNameError
    >>> str(UnknownNameError("technique", "prune.gmq", ["prune.gmp"]))
    "unknown technique 'prune.gmq'; did you mean 'prune.gmp'?"
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class SconceError(Exception):
    """Base class of every error sconce raises for a user's mistake."""


class ConfigError(SconceError, ValueError):
    """A configuration value is invalid (a technique config, a recipe, constraints)."""


class UnknownNameError(SconceError, KeyError):
    """A technique, metric, dataset or model name that nothing registered.

    The message lists the closest registered names, or all of them when few exist.
    """

    def __init__(self, kind: str, name: str, known: Iterable[str], hint: str = "") -> None:
        self.kind = kind
        self.name = name
        self.known = sorted(known)
        close = difflib.get_close_matches(name, self.known, n=3, cutoff=0.5)
        if close:
            suggestion = "did you mean " + " or ".join(repr(c) for c in close) + "?"
        elif self.known:
            suggestion = "known: " + ", ".join(self.known)
        else:
            suggestion = f"no {kind} is registered; install a plugin that provides one"
        message = f"unknown {kind} {name!r}; {suggestion}"
        if hint:
            message += f" ({hint})"
        super().__init__(message)

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


class DataError(SconceError):
    """A dataset is missing, empty, or does not fit the model."""


class ModelError(SconceError):
    """A model cannot be built, loaded, or run as asked."""


class TechniqueError(SconceError):
    """A technique cannot be applied to this model as configured."""


class PluginError(SconceError):
    """A plugin is missing or misbehaves (for example, registers a name twice)."""
