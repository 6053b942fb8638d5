"""What a compression technique is: the contract between the core and every plugin.

A technique is any object with the attributes of :class:`TechniqueProtocol`;
:class:`Technique` is a convenience base class, never required.

``name``
    Dotted and unique among installed plugins: ``prune.gmp``, ``quant.int8``, ``acme.trick``.
``kind``
    One of :data:`KINDS`. ``prune``, ``sparsify`` and ``search`` stages are fine-tuned by the
    pipeline after ``apply`` (with the run's budget, distilling from the original model)
    unless the technique fine-tuned through ``ctx.finetune`` itself; ``quantize`` and
    ``convert`` stages are not.
``Config``
    A :class:`sconce.Config` dataclass: every field has a default, ``validate`` raises a
    one-line :class:`~sconce.errors.ConfigError`, and it round-trips through ``to_dict`` /
    ``from_dict`` (recipes are TOML). Shared fields: ``sparsity`` for ``prune.*``
    (:class:`PruneConfig`), ``bits`` for ``quant.*`` (:class:`QuantizeConfig`). Targets
    relative to the original model use :class:`sconce.recipe.Target` strings (``"4x"``, or an
    absolute value with its unit), as the run's constraints do.
``apply(model, config, ctx) -> nn.Module``
    ``model`` is the pipeline's own working copy (the caller's model is never handed out);
    ``config`` is already validated. ``apply`` may change ``model`` in place and return it, or
    return another module. It reads data and settings only from ``ctx``
    (:class:`sconce.Context`: loaders, ``example_inputs``, ``calibration_inputs``,
    ``evaluate``, ``finetune``, ``teacher``, ``device``, ``seed``, ``timing``, ``work_dir``,
    ``constraints``) and reports through it (``ctx.note``, ``ctx.artifact_path``,
    ``ctx.set_restore_record``). It must not modify ``ctx.teacher``, keep references to the
    model after returning, write outside ``ctx.work_dir``, print, or change global state
    (``matplotlib.use``, ``torch.set_num_threads`` without restoring it). A user's mistake
    raises a :class:`~sconce.errors.SconceError` subclass with one line saying what to do.
``restore(model, config, record) -> nn.Module`` (optional, :class:`Restorable`)
    Needed when ``apply`` changes the model's *structure*: module types, or the names or
    shapes of its parameters and buffers (removed channels, int8 modules, packed weights).
    Given a fresh model of the original architecture and the JSON-able ``record`` that
    ``apply`` left with ``ctx.set_restore_record``, it rebuilds the same structure (weights
    need not be right: :func:`sconce.load` loads them next), so a saved model loads without
    unpickling code. Techniques that change only weight values need none. The pipeline
    compares the structure before and after every stage (:func:`structure_of`) and refuses a
    structural change from a technique without ``restore`` (:func:`check_restorable`), before
    anything is saved.

Registration (``sconce_register_techniques``) checks the protocol with
:func:`validate_technique`: a missing attribute, an undotted name, an unknown kind, a
``Config`` that is not a :class:`sconce.Config` or does not build from its defaults, or a
``restore`` that is not callable is refused with a :class:`~sconce.errors.PluginError`.

Example:
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
    >>> validate_technique(ZeroBias())
    >>> ZeroBias().description
    'Set every bias to zero.'
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass, is_dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

from sconce.config import Config as BaseConfig
from sconce.config import PruneConfig, QuantizeConfig, describe_fields
from sconce.errors import ConfigError, PluginError, TechniqueError

if TYPE_CHECKING:
    from torch import nn

    from sconce.context import Context

KINDS: tuple[str, ...] = ("prune", "quantize", "sparsify", "search", "convert")
"""The kinds a technique may have."""

__all__ = [
    "KINDS",
    "PruneConfig",
    "QuantizeConfig",
    "Restorable",
    "Technique",
    "TechniqueInfo",
    "TechniqueProtocol",
    "check_restorable",
    "describe",
    "make_config",
    "structure_of",
    "technique_info",
    "validate_technique",
]


@runtime_checkable
class TechniqueProtocol(Protocol):
    """The attributes every technique has (see the module docstring for the contract)."""

    name: str
    kind: str
    Config: type[BaseConfig]

    def apply(self, model: nn.Module, config: Any, ctx: Context) -> nn.Module:
        """Compress ``model`` (the pipeline's own copy) and return the compressed model."""
        ...


@runtime_checkable
class Restorable(Protocol):
    """A technique that changes structure also rebuilds it from its JSON record."""

    def restore(self, model: nn.Module, config: Any, record: dict[str, Any]) -> nn.Module:
        """Rebuild on ``model`` (fresh, original architecture) the structure ``apply`` made."""
        ...


class Technique:
    """Convenience base class: a docstring-derived description and a default ``Config``.

    Subclasses set ``name``, ``kind`` and ``Config`` and implement :meth:`apply` (and
    ``restore`` when they change structure).

    Example:
        >>> class Noop(Technique):
        ...     '''Change nothing.'''
        ...     name, kind = "demo.noop", "convert"
        ...     def apply(self, model, config, ctx):
        ...         return model
        >>> Noop()
        <technique demo.noop (convert)>
    """

    name: ClassVar[str] = ""
    kind: ClassVar[str] = ""
    Config: ClassVar[type[BaseConfig]] = BaseConfig

    @property
    def description(self) -> str:
        """The first line of the class docstring."""
        doc = (type(self).__doc__ or "").strip()
        return doc.splitlines()[0] if doc else ""

    def apply(self, model: nn.Module, config: Any, ctx: Context) -> nn.Module:
        """Compress ``model`` and return it; subclasses implement this."""
        raise NotImplementedError(f"{type(self).__name__}.apply is not implemented")

    def __repr__(self) -> str:
        return f"<technique {self.name} ({self.kind})>"


@dataclass(frozen=True)
class TechniqueInfo:
    """An installed technique, as :func:`sconce.list_techniques` describes it.

    Attributes:
        name: the technique's name.
        kind: its kind.
        description: one line about it.
        package: the distribution that provides it (``sconce-prune``).
        plugin: the plugin that registered it.
        fields: ``(name, type, default)`` of each config field.
        restorable: it has ``restore`` (it may change the model's structure).
        technique: the technique object itself.

    Example:
        >>> info = technique_info(ZeroBias(), package="acme", plugin="acme")  # doctest: +SKIP
        >>> info.fields  # doctest: +SKIP
        (('sparsity', 'float', 0.5),)
    """

    name: str
    kind: str
    description: str
    package: str
    plugin: str
    fields: tuple[tuple[str, str, Any], ...]
    restorable: bool
    technique: TechniqueProtocol

    @property
    def config(self) -> type[BaseConfig]:
        """The technique's Config class."""
        return self.technique.Config


def technique_info(technique: TechniqueProtocol, *, package: str, plugin: str) -> TechniqueInfo:
    """Describe an installed ``technique`` (see :class:`TechniqueInfo`).

    Example:
        >>> class T(Technique):
        ...     name, kind, Config = "x.t", "prune", PruneConfig
        >>> technique_info(T(), package="x", plugin="x").fields
        (('sparsity', 'float', 0.5),)
    """
    return TechniqueInfo(technique.name, technique.kind, describe(technique), package, plugin,
                         tuple(describe_fields(technique.Config)),
                         isinstance(technique, Restorable), technique)


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
    """Raise :class:`PluginError` when ``technique`` breaks the protocol.

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
    name = technique.name
    if not isinstance(name, str) or "." not in name.strip("."):
        raise PluginError(
            f"technique name {name!r} must be dotted, like 'prune.gmp' or 'myorg.trick'"
        )
    if technique.kind not in KINDS:
        raise PluginError(
            f"technique {name!r} has kind {technique.kind!r}; use one of {', '.join(KINDS)}"
        )
    config_cls = technique.Config
    if not (isinstance(config_cls, type) and issubclass(config_cls, BaseConfig)
            and is_dataclass(config_cls)):
        raise PluginError(f"technique {name!r}: Config must be a dataclass subclassing "
                          f"sconce.Config, got {config_cls!r}")
    try:
        config_cls()
    except Exception as exc:
        raise PluginError(f"technique {name!r}: {config_cls.__name__}() must build from its "
                          f"defaults ({type(exc).__name__}: {exc})") from None
    _check_callable(technique, "apply", 3)
    if hasattr(technique, "restore"):
        _check_callable(technique, "restore", 3)


def _check_callable(technique: Any, method: str, arguments: int) -> None:
    function = getattr(technique, method)
    if not callable(function):
        raise PluginError(f"technique {technique.name!r}: {method} is not callable")
    try:
        inspect.signature(function).bind(*range(arguments))
    except TypeError:
        raise PluginError(f"technique {technique.name!r}: {method} must take "
                          f"(model, config, {'ctx' if method == 'apply' else 'record'})"
                          ) from None
    except ValueError:  # no signature to inspect (a builtin): nothing more to check
        return


def make_config(technique: Any, value: BaseConfig | Mapping[str, Any] | None = None
                ) -> BaseConfig:
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
    if isinstance(value, BaseConfig):
        raise ConfigError(
            f"{technique.name} takes a {config_cls.__name__}, got a {type(value).__name__}"
        )
    if isinstance(value, Mapping):
        return config_cls.from_dict(value)
    raise ConfigError(
        f"config for {technique.name} must be a dict or a {config_cls.__name__}, got {value!r}"
    )


def structure_of(model: nn.Module) -> dict[str, str]:
    """What :func:`sconce.load` must rebuild: each module's type, each tensor's shape.

    Example:
        >>> from torch import nn
        >>> structure_of(nn.Linear(3, 2))
        {'': 'torch.nn.modules.linear.Linear', 'weight': '(2, 3)', 'bias': '(2,)'}
    """
    shape: dict[str, str] = {}
    for name, module in model.named_modules():
        shape[name] = f"{type(module).__module__}.{type(module).__qualname__}"
    for name, tensor in model.state_dict().items():
        shape[name] = str(tuple(tensor.shape)) if hasattr(tensor, "shape") else type(
            tensor).__name__
    return shape


def check_restorable(technique: Any, before: Mapping[str, str], after: Mapping[str, str]
                     ) -> None:
    """Refuse a structural change (``before`` != ``after``) by a technique without restore.

    Example:
        >>> class T(Technique):
        ...     name, kind = "x.t", "prune"
        >>> check_restorable(T(), {"fc": "Linear"}, {"fc": "Identity"})  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        sconce.errors.TechniqueError: technique 'x.t' changed ... (fc: Linear -> Identity) ...
    """
    if before == after or isinstance(technique, Restorable):
        return
    changed = [f"{k}: {before.get(k, 'absent')} -> {after.get(k, 'absent')}"
               for k in sorted(set(before) | set(after)) if before.get(k) != after.get(k)]
    shown = "; ".join(changed[:3]) + (f"; and {len(changed) - 3} more" if len(changed) > 3 else "")
    raise TechniqueError(
        f"technique {technique.name!r} changed the model's structure ({shown}) but has no "
        "restore(model, config, record); sconce.load could not rebuild it — add restore() "
        "and leave a record with ctx.set_restore_record"
    )
