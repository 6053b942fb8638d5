"""Recipes (ordered stages) and deployment constraints, in Python or TOML.

A recipe file::

    [[stage]]
    technique = "prune.gmp"
    sparsity = 0.8

    [[stage]]
    technique = "quant.int8"

    [constraints]
    max_accuracy_drop = 1.0

    [options]
    finetune_epochs = 2

:func:`sconce.compress` takes either form: ``recipe="recipe.toml"`` (a path: a ``str``
ending in ``.toml`` or a :class:`pathlib.Path`) reads the file, its constraints and options
(:func:`read_recipe`).

Targets use one convention everywhere, in constraints and in technique configs alike
(:class:`Target`): ``"4x"`` is a reduction against the original model (4x smaller, faster,
fewer MACs); a number, optionally with its unit (``"3ms"``, ``"2.5MiB"``, ``"300M"``), is an
absolute value in the metric's unit.

Example:
    >>> recipe = Recipe.from_value(["prune.gmp", ("quant.int8", {"bits": 8})])
    >>> [stage.technique for stage in recipe.stages]
    ['prune.gmp', 'quant.int8']
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from sconce.config import Config
from sconce.errors import ConfigError


@dataclass(frozen=True)
class Stage:
    """One step of a recipe: a technique name and its config (dict, Config, or None).

    Example:
        >>> Stage("prune.gmp", {"sparsity": 0.8}).label
        'prune.gmp'
    """

    technique: str
    config: Config | Mapping[str, Any] | None = None
    label: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.technique, str) or not self.technique:
            raise ConfigError(f"a recipe stage needs a technique name, got {self.technique!r}")
        if not self.label:
            object.__setattr__(self, "label", self.technique)

    def config_dict(self) -> dict[str, Any]:
        """The stage's config as a plain dict (``{}`` when unset)."""
        if isinstance(self.config, Config):
            return self.config.to_dict()
        return dict(self.config or {})


@dataclass(frozen=True)
class Recipe:
    """An ordered list of stages.

    Example:
        >>> len(Recipe.from_value("prune.gmp").stages)
        1
    """

    stages: tuple[Stage, ...] = ()

    @classmethod
    def from_value(cls, value: Recipe | str | Stage | Iterable[Any] | None) -> Recipe:
        """Build a recipe from a Recipe, a name, a Stage, or a list of names / (name, config).

        Example:
            >>> Recipe.from_value([("prune.gmp", {"sparsity": 0.5})]).stages[0].config
            {'sparsity': 0.5}
        """
        if value is None:
            return cls()
        if isinstance(value, Recipe):
            return value
        if isinstance(value, (str, Stage)):
            value = [value]
        stages = []
        for item in value:
            if isinstance(item, Stage):
                stages.append(item)
            elif isinstance(item, str):
                stages.append(Stage(item))
            elif isinstance(item, Sequence) and len(item) == 2 and isinstance(item[0], str):
                config: Any = item[1]
                stages.append(Stage(item[0], config))
            else:
                raise ConfigError(
                    f"recipe stage {item!r} is not a technique name or a (name, config) pair"
                )
        return cls(tuple(stages))

    @classmethod
    def from_toml(cls, path: str | Path) -> tuple[Recipe, Constraints | None, dict[str, Any]]:
        """Read a recipe file: stages, optional ``[constraints]`` and ``[options]``.

        Example:
            >>> import tempfile, os
            >>> f = tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False)
            >>> _ = f.write('[[stage]]\\ntechnique = "prune.gmp"\\nsparsity = 0.8\\n'); f.close()
            >>> Recipe.from_toml(f.name)[0].stages[0].config
            {'sparsity': 0.8}
            >>> os.unlink(f.name)
        """
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"recipe file {str(path)!r} does not exist")
        try:
            document = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"recipe file {str(path)!r} is not valid TOML: {exc}") from None
        unknown = set(document) - {"stage", "constraints", "options"}
        if unknown:
            raise ConfigError(
                f"recipe file {str(path)!r} has unknown table(s) {sorted(unknown)}; "
                "use [[stage]], [constraints] and [options]"
            )
        stages = []
        for index, table in enumerate(document.get("stage", []), start=1):
            table = dict(table)
            name = table.pop("technique", None)
            if not name:
                raise ConfigError(f"stage {index} of {str(path)!r} has no 'technique = \"...\"'")
            label = table.pop("label", "")
            stages.append(Stage(name, table, label))
        constraints_table = document.get("constraints")
        constraints = Constraints.from_value(constraints_table) if constraints_table else None
        return cls(tuple(stages)), constraints, dict(document.get("options", {}))


def read_recipe(value: Recipe | str | Path | Stage | Iterable[Any] | None
                ) -> tuple[Recipe, Constraints | None, dict[str, Any]]:
    """A recipe with the constraints and options that came with it.

    A :class:`pathlib.Path`, or a ``str`` ending in ``.toml``, is a recipe file
    (:meth:`Recipe.from_toml`); anything else is a recipe in Python (:meth:`Recipe.from_value`),
    with no constraints or options of its own.

    Example:
        >>> read_recipe("prune.gmp")[0].stages[0].technique
        'prune.gmp'
    """
    if isinstance(value, Path) or (isinstance(value, str) and value.lower().endswith(".toml")):
        return Recipe.from_toml(value)
    return Recipe.from_value(value), None, {}


_RATIO = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*x\s*$", re.IGNORECASE)
_WITH_UNIT = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(ms|mib|m|g|k)?\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class Target:
    """A target that is either an absolute value or a reduction ratio against the original.

    ``Target.parse("2x")`` means "at least 2x smaller/faster than the original";
    ``Target.parse(5)`` means "at most 5 (in the metric's unit)".

    Example:
        >>> Target.parse("2x").limit(original=10.0)
        5.0
        >>> Target.parse("3ms").limit(original=10.0)
        3.0
    """

    value: float
    is_ratio: bool = False

    @classmethod
    def parse(cls, value: float | int | str | Target | None, name: str = "target") -> Target | None:
        """Parse a number, ``"<n>x"`` (a ratio) or a number with a unit (ms, MiB, K/M/G)."""
        if value is None or isinstance(value, Target):
            return value
        if isinstance(value, bool):
            raise ConfigError(f"{name} must be a number or a ratio like '2x', got {value!r}")
        if isinstance(value, (int, float)):
            number, ratio = float(value), False
        elif isinstance(value, str) and (match := _RATIO.match(value)):
            number, ratio = float(match.group(1)), True
        elif isinstance(value, str) and (match := _WITH_UNIT.match(value)):
            scale = {"k": 1e3, "m": 1e6, "g": 1e9}.get((match.group(2) or "").lower(), 1.0)
            number, ratio = float(match.group(1)) * scale, False
        else:
            raise ConfigError(
                f"{name} must be a number or a ratio like '2x', got {value!r}"
            )
        if number <= 0:
            raise ConfigError(f"{name} must be > 0, got {value!r}")
        return cls(number, ratio)

    def limit(self, original: float) -> float:
        """The largest acceptable value given the original model's value."""
        return original / self.value if self.is_ratio else self.value

    def __str__(self) -> str:
        return f"{self.value:g}x" if self.is_ratio else f"{self.value:g}"


@dataclass(frozen=True)
class Constraints:
    """What the compressed model must satisfy.

    Attributes:
        max_accuracy_drop: accuracy points (percent) the model may lose against the original.
        target_latency: ms/sample at batch 1, or a speed-up ratio like ``"2x"``.
        target_size_mib: size in MiB, or a reduction ratio like ``"4x"``.
        target_macs: MACs per sample, or a reduction ratio like ``"2x"``.

    Example:
        >>> limits = Constraints.from_value({"max_accuracy_drop": 1, "target_size_mib": "4x"})
        >>> limits.target_size_mib
        Target(value=4.0, is_ratio=True)
    """

    max_accuracy_drop: float | None = None
    target_latency: Target | None = None
    target_size_mib: Target | None = None
    target_macs: Target | None = None

    def __post_init__(self) -> None:
        drop = self.max_accuracy_drop
        if drop is not None:
            if isinstance(drop, bool) or not isinstance(drop, (int, float)) or drop < 0:
                raise ConfigError(f"max_accuracy_drop must be a number >= 0, got {drop!r}")
            object.__setattr__(self, "max_accuracy_drop", float(drop))
        for name in ("target_latency", "target_size_mib", "target_macs"):
            object.__setattr__(self, name, Target.parse(getattr(self, name), name))

    @classmethod
    def from_value(cls, value: Constraints | Mapping[str, Any] | None) -> Constraints | None:
        """Build constraints from a Constraints, a dict with the same keys, or None."""
        if value is None or isinstance(value, Constraints):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"constraints must be a dict or sconce.Constraints, got {value!r}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(value) - known)
        if unknown:
            raise ConfigError(
                f"unknown constraint(s) {unknown}; known: {', '.join(sorted(known))}"
            )
        return cls(**dict(value))

    def is_empty(self) -> bool:
        """True when no constraint is set."""
        return all(
            getattr(self, name) is None
            for name in ("max_accuracy_drop", "target_latency", "target_size_mib", "target_macs")
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain values, ratios written as ``"2x"``."""
        out: dict[str, Any] = {}
        for name in ("max_accuracy_drop", "target_latency", "target_size_mib", "target_macs"):
            value = getattr(self, name)
            if value is not None:
                out[name] = str(value) if isinstance(value, Target) and value.is_ratio else (
                    value.value if isinstance(value, Target) else value
                )
        return out
