"""Search spaces: a model family as named dimensions with ordered options and a builder.

A :class:`SearchSpace` declares its dimensions (``"stage1.width": (0.5, 0.75, 1.0)``, ...),
each with options ordered from the smallest to the largest, and builds the standalone member
for a choice (one option per dimension). Weight sharing needs one property of the family:
every member's parameters and buffers are named like the largest member's and are no larger
in any dimension (a narrower layer, a shallower stage, a smaller kernel taken from the centre
of a larger one). :class:`sconce_nas.Supernet` checks it.

Spaces are found by family name when a saved model is loaded, so nothing is unpickled:
``declare_family`` (a user's own family) and ``register_family`` (a family with arguments,
like :class:`sconce_nas.ElasticCNN`) make a family known in this process.

Example:
    >>> from torch import nn
    >>> space = declare_family(
    ...     "doc-mlp", {"hidden": (8, 16, 32)},
    ...     lambda choice: nn.Sequential(nn.Linear(4, choice["hidden"]), nn.ReLU(),
    ...                                  nn.Linear(choice["hidden"], 2)))
    >>> space.largest(), space.size
    ({'hidden': 32}, 3)
    >>> space_from_record({"family": "doc-mlp", "space": {}}) is space
    True
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from sconce.errors import ConfigError, ModelError

logger = logging.getLogger(__name__)

Choice = dict[str, Any]
"""One option per dimension name: a member of the family."""


@dataclass(frozen=True)
class Dimension:
    """One searchable dimension: a name and its options, smallest first.

    Example:
        >>> Dimension("stage1.depth", (1, 2, 3)).options[-1]
        3
    """

    name: str
    options: tuple[Any, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError(f"a search dimension needs a name, got {self.name!r}")
        options = tuple(self.options)
        if not options:
            raise ConfigError(f"search dimension {self.name!r} has no options")
        if len(set(options)) != len(options):
            raise ConfigError(f"search dimension {self.name!r} repeats an option: {options}")
        object.__setattr__(self, "options", options)


class SearchSpace:
    """A model family: dimensions with ordered options and a builder of standalone members.

    Subclasses set :attr:`family`, return their dimensions from :meth:`dimensions` and build
    members in :meth:`build`; :meth:`spec` returns the JSON-able arguments that rebuild the
    space through the family registry.

    Example:
        >>> space = declare_family("doc-width", {"width": (4, 8)},
        ...                        lambda c: nn.Linear(3, c["width"]))
        >>> space.build({"width": 4}).out_features
        4
    """

    family: str = ""

    def dimensions(self) -> tuple[Dimension, ...]:
        """The searchable dimensions, in a fixed order."""
        raise NotImplementedError

    def build(self, choice: Mapping[str, Any]) -> nn.Module:
        """A freshly initialised standalone member for ``choice``."""
        raise NotImplementedError

    def spec(self) -> dict[str, Any]:
        """JSON-able keyword arguments that rebuild this space from its family (``{}``)."""
        return {}

    def latency_units(self, model: nn.Module) -> list[nn.Module]:
        """The modules a latency lookup table times one by one for ``model``.

        The default descends through plain ``nn.Sequential`` and ``nn.ModuleList``
        containers and takes every other module whole (a block, a conv-bn-act, a pool).
        """
        return list(_units(model))

    # --- derived ---------------------------------------------------------------------------
    @property
    def size(self) -> int:
        """How many members the family has (the product of the option counts)."""
        return math.prod(len(d.options) for d in self.dimensions())

    def largest(self) -> Choice:
        """The choice with every dimension at its last (largest) option."""
        return {d.name: d.options[-1] for d in self.dimensions()}

    def smallest(self) -> Choice:
        """The choice with every dimension at its first (smallest) option."""
        return {d.name: d.options[0] for d in self.dimensions()}

    def sample(self, rng: random.Random) -> Choice:
        """A uniformly random member."""
        return {d.name: rng.choice(d.options) for d in self.dimensions()}

    def check(self, choice: Mapping[str, Any]) -> Choice:
        """``choice`` as a plain dict in dimension order; unknown or missing names and
        options that are not offered raise :class:`~sconce.errors.ConfigError`."""
        dims = self.dimensions()
        names = [d.name for d in dims]
        unknown = sorted(set(choice) - set(names))
        if unknown:
            raise ConfigError(f"{self.family}: unknown dimension(s) {unknown}; "
                              f"the space has {', '.join(names)}")
        out: Choice = {}
        for dim in dims:
            if dim.name not in choice:
                raise ConfigError(f"{self.family}: the choice gives no {dim.name!r}")
            value = choice[dim.name]
            if value not in dim.options:
                raise ConfigError(f"{self.family}: {dim.name}={value!r} is not an option; "
                                  f"choose one of {list(dim.options)}")
            out[dim.name] = value
        return out

    def key(self, choice: Mapping[str, Any]) -> str:
        """A short stable text for a choice (cache keys, logs).

        Example:
            >>> declare_family("doc-key", {"a": (1, 2), "b": (3,)},
            ...                lambda c: nn.Identity()).key({"a": 2, "b": 3})
            'a=2 b=3'
        """
        return " ".join(f"{d.name}={choice[d.name]}" for d in self.dimensions())

    def __repr__(self) -> str:
        return f"<search space {self.family}: {len(self.dimensions())} dimensions, " \
               f"{self.size} members>"


def _units(module: nn.Module) -> Iterator[nn.Module]:
    for child in module.children():
        if type(child) in (nn.Sequential, nn.ModuleList):
            yield from _units(child)
        else:
            yield child


class DeclaredSpace(SearchSpace):
    """A user's family declared with :func:`declare_family`: dimensions and a builder."""

    def __init__(self, family: str, dimensions: Sequence[Dimension],
                 builder: Callable[[Choice], nn.Module]) -> None:
        self.family = family
        self._dimensions = tuple(dimensions)
        self._builder = builder

    def dimensions(self) -> tuple[Dimension, ...]:
        return self._dimensions

    def build(self, choice: Mapping[str, Any]) -> nn.Module:
        model = self._builder(dict(choice))
        if not isinstance(model, nn.Module):
            raise ModelError(f"the builder of family {self.family!r} returned "
                             f"{type(model).__name__}, not an nn.Module")
        return model


_FAMILIES: dict[str, Callable[..., SearchSpace]] = {}


def register_family(name: str, factory: Callable[..., SearchSpace]) -> None:
    """Make family ``name`` known: ``factory(**spec)`` rebuilds a space from its spec.

    Registering a name again replaces the factory (re-running a notebook cell is fine).

    Example:
        >>> register_family("doc-factory", lambda width=8: declare_family(
        ...     "doc-factory-member", {"w": (width,)}, lambda c: nn.Linear(2, c["w"])))
        >>> space_from_record({"family": "doc-factory", "space": {"width": 4}}).largest()
        {'w': 4}
    """
    if not isinstance(name, str) or not name:
        raise ConfigError(f"a family needs a name, got {name!r}")
    _FAMILIES[name] = factory


def declare_family(name: str, choices: Mapping[str, Sequence[Any]],
                   build: Callable[[Choice], nn.Module]) -> DeclaredSpace:
    """Declare a model family: per-dimension options (smallest first) and a builder.

    The family is registered under ``name`` so that :func:`sconce.load` can rebuild a member
    found by the search; declare it again (import the module that declares it) in any
    process that loads such a model.

    Example:
        >>> space = declare_family("doc-convnet", {"width": (8, 16), "kernel": (3, 5)},
        ...     lambda c: nn.Conv2d(1, c["width"], c["kernel"], padding=c["kernel"] // 2))
        >>> space.smallest()
        {'width': 8, 'kernel': 3}
    """
    if not isinstance(choices, Mapping) or not choices:
        raise ConfigError(f"family {name!r} needs choices: a dict of dimension -> options")
    if not callable(build):
        raise ConfigError(f"family {name!r} needs build(choice) -> nn.Module")
    space = DeclaredSpace(name, [Dimension(k, tuple(v)) for k, v in choices.items()], build)
    register_family(name, lambda: space)
    return space


def known_families() -> list[str]:
    """The families registered in this process.

    Example:
        >>> "elastic-cnn" in known_families()
        True
    """
    import sconce_nas.elastic  # noqa: F401  (registers the built-in family)

    return sorted(_FAMILIES)


def space_from_record(record: Mapping[str, Any]) -> SearchSpace:
    """Rebuild a space from ``{"family": name, "space": spec}``.

    Raises:
        ModelError: when the family is not registered in this process.
    """
    family = record.get("family")
    names = known_families()
    if family not in _FAMILIES:
        raise ModelError(f"search-space family {family!r} is not declared in this process "
                         f"(known: {', '.join(names)}); import the module that declares it "
                         "before loading the model")
    space = _FAMILIES[family](**dict(record.get("space") or {}))
    if not isinstance(space, SearchSpace):
        raise ModelError(f"family {family!r} did not build a SearchSpace")
    return space
