"""Dataclass configs for techniques: defaults, validation and dict round-trips.

A technique's ``Config`` is a dataclass whose every field has a sensible default. Subclass
:class:`Config`, declare fields, and check them in :meth:`Config.validate`; a bad value raises
:class:`~sconce.errors.ConfigError` naming the field, the value and what is allowed.

Example:
    >>> from dataclasses import dataclass
    >>> @dataclass
    ... class MyConfig(PruneConfig):
    ...     steps: int = 3
    >>> MyConfig.from_dict({"sparsity": 0.8}).to_dict()
    {'sparsity': 0.8, 'steps': 3}
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Self

from sconce.errors import ConfigError


@dataclass
class Config:
    """Base class of technique configs (a dataclass with validation and dict round-trips)."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise :class:`ConfigError` when a field is invalid. Subclasses extend this."""

    def to_dict(self) -> dict[str, Any]:
        """The config as plain, TOML/JSON-friendly values (tuples become lists).

        Example:
            >>> PruneConfig(sparsity=0.5).to_dict()
            {'sparsity': 0.5}
        """
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None = None) -> Self:
        """Build a config from a mapping; unknown keys are an error that lists the known ones.

        Example:
            >>> PruneConfig.from_dict({"sparsity": 0.25}).sparsity
            0.25
        """
        data = dict(data or {})
        known = {f.name: f for f in dataclasses.fields(cls) if f.init}
        unknown = [key for key in data if key not in known]
        if unknown:
            key = unknown[0]
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"did you mean {close[0]!r}?" if close else "known: " + ", ".join(known)
            raise ConfigError(cls.unknown_field_message(key, hint))
        hints = typing.get_type_hints(cls)
        values = {key: _coerce(key, value, hints.get(key)) for key, value in data.items()}
        try:
            return cls(**values)
        except TypeError as exc:
            raise ConfigError(f"{cls.__name__}: {exc}") from None

    @classmethod
    def unknown_field_message(cls, key: str, hint: str) -> str:
        """The error line for an unknown key (``hint``: the closest field, or all of them).

        Example:
            >>> PruneConfig.unknown_field_message("sparsty", "did you mean 'sparsity'?")
            "PruneConfig has no field 'sparsty'; did you mean 'sparsity'?"
        """
        return f"{cls.__name__} has no field {key!r}; {hint}"

    def replace(self, **changes: Any) -> Self:
        """A copy with some fields changed (validated again).

        Example:
            >>> PruneConfig().replace(sparsity=0.9).sparsity
            0.9
        """
        return dataclasses.replace(self, **changes)


@dataclass
class PruneConfig(Config):
    """Fields every ``prune.*`` technique shares.

    Attributes:
        sparsity: the fraction removed: of weights for unstructured methods, of channels per
            prunable layer for structured ones. In [0, 1).
    """

    sparsity: float = 0.5

    def validate(self) -> None:
        super().validate()
        check_range("sparsity", self.sparsity, 0.0, 1.0, high_inclusive=False)


@dataclass
class QuantizeConfig(Config):
    """Fields every ``quant.*`` technique shares.

    Attributes:
        bits: bits per quantized weight.
    """

    bits: int = 8

    def validate(self) -> None:
        super().validate()
        check_choice("bits", self.bits, (2, 3, 4, 8))


def check_range(
    name: str,
    value: float,
    low: float,
    high: float,
    *,
    low_inclusive: bool = True,
    high_inclusive: bool = True,
) -> None:
    """Raise :class:`ConfigError` unless ``low <= value <= high`` (bounds as asked).

    Example:
        >>> check_range("sparsity", 1.0, 0.0, 1.0, high_inclusive=False)
        Traceback (most recent call last):
        ...
        sconce.errors.ConfigError: sparsity must be in [0.0, 1.0), got 1.0
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{name} must be a number, got {value!r}")
    ok_low = value >= low if low_inclusive else value > low
    ok_high = value <= high if high_inclusive else value < high
    if not (ok_low and ok_high):
        left = "[" if low_inclusive else "("
        right = "]" if high_inclusive else ")"
        raise ConfigError(f"{name} must be in {left}{low}, {high}{right}, got {value!r}")


def check_choice(name: str, value: Any, choices: Iterable[Any]) -> None:
    """Raise :class:`ConfigError` unless ``value`` is one of ``choices``.

    Example:
        >>> check_choice("bits", 8, (4, 8))
    """
    options = tuple(choices)
    if value not in options:
        raise ConfigError(f"{name} must be one of {', '.join(map(repr, options))}; got {value!r}")


def check_positive(name: str, value: float, *, allow_zero: bool = False) -> None:
    """Raise :class:`ConfigError` unless ``value`` is > 0 (or >= 0 with ``allow_zero``).

    Example:
        >>> check_positive("epochs", 0, allow_zero=True)
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{name} must be a number, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"{name} must be {bound}, got {value!r}")


def describe_fields(config_cls: type[Config]) -> list[tuple[str, str, Any]]:
    """``(name, type, default)`` for each field of a config class (for ``sconce techniques``).

    Example:
        >>> describe_fields(PruneConfig)
        [('sparsity', 'float', 0.5)]
    """
    rows = []
    hints = typing.get_type_hints(config_cls)
    for f in dataclasses.fields(config_cls):
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = None
        rows.append((f.name, _type_name(hints.get(f.name, f.type)), _plain(default)))
    return rows


def _type_name(hint: Any) -> str:
    if isinstance(hint, type):
        return hint.__name__
    return str(hint).replace("typing.", "")


def _plain(value: Any) -> Any:
    if isinstance(value, Config):
        return value.to_dict()
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def _coerce(name: str, value: Any, hint: Any) -> Any:
    """Turn TOML/JSON values into the field's declared type where that is unambiguous."""
    if hint is None:
        return value
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        non_none = [a for a in args if a is not type(None)]
        if len(non_none) == 1:
            return _coerce(name, value, non_none[0])
        return value
    if origin is tuple and isinstance(value, list):
        return tuple(value)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(hint, type) and issubclass(hint, Config) and isinstance(value, Mapping):
        return hint.from_dict(value)
    return value
