"""What a compression technique is.

A technique is any object with ``name``, ``kind``, ``Config`` and ``apply`` (the
:class:`TechniqueProtocol`); :class:`Technique` is a convenience base class, never required.
``apply`` receives the core's own copy of the model and returns the compressed model.

A technique that changes a model's structure (removes channels, swaps modules for int8 ones)
also defines ``restore(model, config, record)``: given a freshly built model of the original
architecture and the JSON-able ``record`` it left through ``ctx.set_restore_record`` during
``apply``, it rebuilds the same structure so :func:`sconce.load` can load the saved weights
without unpickling code. Techniques that only change weight values need no ``restore``.

Example:
    >>> from dataclasses import dataclass
    >>> import torch
    >>> class ZeroBias(Technique):
    ...     '''Set every bias to zero.'''
    ...     name = "demo.zero_bias"
    ...     kind = "prune"
    ...     Config = PruneConfig
    ...     def apply(self, model, config, ctx):
    ...         with torch.no_grad():
    ...             for module in model.modules():
    ...                 if getattr(module, "bias", None) is not None:
    ...                     module.bias.zero_()
    ...         return model
    >>> ZeroBias().description
    'Set every bias to zero.'
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

from sconce.config import Config, PruneConfig, QuantizeConfig
from sconce.errors import ConfigError, PluginError

if TYPE_CHECKING:
    from torch import nn

    from sconce.context import Context

KINDS: tuple[str, ...] = ("prune", "quantize", "sparsify", "search", "convert")

__all__ = [
    "KINDS",
    "PruneConfig",
    "QuantizeConfig",
    "Technique",
    "TechniqueProtocol",
    "make_config",
    "validate_technique",
]


@runtime_checkable
class TechniqueProtocol(Protocol):
    """The attributes every technique has."""

    name: str
    kind: str
    Config: type[Config]

    def apply(self, model: nn.Module, config: Config, ctx: Context) -> nn.Module:
        """Compress ``model`` (the core's own copy) and return the compressed model."""
        ...


class Technique:
    """Convenience base class: a docstring-derived description and a default ``Config``.

    Subclasses set ``name``, ``kind`` and ``Config`` and implement :meth:`apply`.
    """

    name: ClassVar[str] = ""
    kind: ClassVar[str] = ""
    Config: ClassVar[type[Config]] = Config

    @property
    def description(self) -> str:
        """The first line of the class docstring."""
        doc = (type(self).__doc__ or "").strip()
        return doc.splitlines()[0] if doc else ""

    def apply(self, model: nn.Module, config: Config, ctx: Context) -> nn.Module:
        """Compress ``model`` and return it; subclasses implement this."""
        raise NotImplementedError(f"{type(self).__name__}.apply is not implemented")

    def __repr__(self) -> str:
        return f"<technique {self.name} ({self.kind})>"


def describe(technique: Any) -> str:
    """One line about a technique: its ``description`` or its docstring's first line.

    Example:
        >>> describe(object())
        ''
    """
    text = getattr(technique, "description", None)
    if isinstance(text, str) and text:
        return text
    doc = (type(technique).__doc__ or "").strip()
    return doc.splitlines()[0] if doc and type(technique).__doc__ != object.__doc__ else ""


def validate_technique(technique: Any) -> None:
    """Raise :class:`PluginError` when ``technique`` lacks part of the protocol.

    Example:
        >>> validate_technique(object())
        Traceback (most recent call last):
        ...
        sconce.errors.PluginError: technique <object> lacks name, kind, Config, apply
    """
    missing = [attr for attr in ("name", "kind", "Config", "apply") if not hasattr(technique, attr)]
    if missing:
        label = getattr(technique, "name", f"<{type(technique).__name__}>")
        raise PluginError(f"technique {label} lacks {', '.join(missing)}")
    if technique.kind not in KINDS:
        raise PluginError(
            f"technique {technique.name!r} has kind {technique.kind!r}; "
            f"use one of {', '.join(KINDS)}"
        )
    if "." not in technique.name:
        raise PluginError(
            f"technique name {technique.name!r} must be dotted, like 'prune.gmp' or 'myorg.trick'"
        )


def make_config(technique: Any, value: Config | Mapping[str, Any] | None = None) -> Config:
    """Turn ``None``, a dict or a Config into the technique's validated ``Config``.

    Example:
        >>> class T(Technique):
        ...     name, kind, Config = "x.t", "prune", PruneConfig
        >>> make_config(T(), {"sparsity": 0.3})
        PruneConfig(sparsity=0.3)
    """
    config_cls = technique.Config
    if value is None:
        return config_cls()
    if isinstance(value, config_cls):
        value.validate()
        return value
    if isinstance(value, Config):
        raise ConfigError(
            f"{technique.name} takes a {config_cls.__name__}, got a {type(value).__name__}"
        )
    if isinstance(value, Mapping):
        return config_cls.from_dict(value)
    raise ConfigError(
        f"config for {technique.name} must be a dict or a {config_cls.__name__}, got {value!r}"
    )
