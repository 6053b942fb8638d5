"""The rule table the dependency analysis receives, and ``register_rule`` for user layers.

A :class:`RuleTable` answers, for every layer type, how channels flow through it. It looks,
in this order and along each type's base classes: the rules given to this table, the rules
registered with :func:`register_rule`, layer types that plugins describe through the
``sconce_register_layer_rules`` hook (``sconce.ChannelwiseLayer``), then the built-in rules
of :mod:`.layer_rules` and :mod:`.op_rules`. Layers described by a registered or plugin rule
are leaves: the tracer does not go into their ``forward``.

A rule is one of:

- ``sconce.ChannelwiseLayer(per_channel=(...), channel_axis=1)``: the layer acts on each
  channel on its own (activations with per-channel parameters, spiking neurons);
- :class:`ChannelMixingLayer`: the layer reads its input channels and makes new ones (a
  custom linear or convolution);
- a callable ``rule(builder, call)`` (:data:`~sconce_prune.channel.builder.LayerRule`) for
  anything else, written with the :class:`~sconce_prune.channel.builder.GraphBuilder`
  helpers as the built-in rules are.

Example:
    >>> import torch
    >>> from torch import nn
    >>> import sconce
    >>> from sconce_prune.channel import ChannelPruner
    >>> class Scale(nn.Module):  # a per-channel scale the tracer would not know
    ...     def __init__(self, channels):
    ...         super().__init__()
    ...         self.gain = nn.Parameter(torch.ones(channels))
    ...     def forward(self, x):
    ...         return x * self.gain.view(1, -1, 1, 1)
    >>> register_rule(Scale, sconce.ChannelwiseLayer(per_channel=("gain",)))
    >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), Scale(8), nn.Conv2d(8, 4, 3))
    >>> _ = ChannelPruner(net, torch.randn(1, 3, 8, 8), sparsity=0.5).prune()
    >>> net[1].gain.shape
    torch.Size([4])
    >>> unregister_rule(Scale)
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from typing import Any

from torch import nn

from sconce.errors import ConfigError
from sconce.layers import ChannelwiseLayer
from sconce_prune.channel.builder import FunctionRule, LayerRule
from sconce_prune.channel.layer_rules import (
    LAYER_RULES,
    ChannelMixingLayer,
    channelwise_rule,
    mixing_rule,
)
from sconce_prune.channel.op_rules import function_table

logger = logging.getLogger(__name__)

Rule = ChannelwiseLayer | ChannelMixingLayer | LayerRule
"""What :func:`register_rule` accepts."""

_registered: dict[type[nn.Module], LayerRule] = {}
_lock = threading.Lock()


def as_layer_rule(rule: Any, module_type: Any = None) -> LayerRule:
    """Turn a description (or a callable rule) into a layer rule.

    Raises:
        ConfigError: ``rule`` is neither a description nor a callable.

    Example:
        >>> as_layer_rule(ChannelMixingLayer()).__name__
        'mixing_layer'
    """
    if isinstance(rule, ChannelwiseLayer):
        return channelwise_rule(rule)
    if isinstance(rule, ChannelMixingLayer):
        return mixing_rule(rule)
    if callable(rule):
        return rule
    what = f" for {module_type.__name__}" if isinstance(module_type, type) else ""
    raise ConfigError(f"the channel rule{what} must be a sconce.ChannelwiseLayer, a "
                      f"ChannelMixingLayer or a callable rule(builder, call), got {rule!r}")


def _check_type(module_type: Any) -> type[nn.Module]:
    if not (isinstance(module_type, type) and issubclass(module_type, nn.Module)):
        raise ConfigError(f"register_rule takes an nn.Module subclass, got {module_type!r}")
    return module_type


def register_rule(module_type: type[nn.Module], rule: Rule) -> None:
    """Teach channel pruning a layer type of yours (used by every later analysis).

    Instances of ``module_type`` and its subclasses then follow ``rule`` and are not traced
    into. Registering a type again replaces its rule.

    Args:
        module_type: the layer class.
        rule: a ``sconce.ChannelwiseLayer``, a :class:`ChannelMixingLayer` or a callable
            ``rule(builder, call)``.

    Raises:
        ConfigError: ``module_type`` is not an ``nn.Module`` subclass or ``rule`` is not a
            rule.

    Example:
        >>> class MyLinear(nn.Linear):
        ...     pass
        >>> register_rule(MyLinear, ChannelMixingLayer(out_count=("out_features",),
        ...                                            in_count=("in_features",)))
        >>> unregister_rule(MyLinear)
    """
    layer_rule = as_layer_rule(rule, _check_type(module_type))
    with _lock:
        if module_type in _registered:
            logger.info("replacing the channel rule of %s", module_type.__name__)
        _registered[module_type] = layer_rule


def unregister_rule(module_type: type[nn.Module]) -> None:
    """Forget the rule :func:`register_rule` gave ``module_type`` (no error if none).

    Example:
        >>> unregister_rule(nn.Module)
    """
    with _lock:
        _registered.pop(module_type, None)


def _plugin_rules() -> dict[type, Any]:
    from sconce.plugins import registry

    return registry().layer_rules


class RuleTable:
    """How channels flow through every layer type, function and tensor method.

    Args:
        rules: extra rules for this table only (layer type -> rule), looked up first.
        plugins: include the layer types plugins describe (``sconce_register_layer_rules``).

    Example:
        >>> table = RuleTable()
        >>> table.layer_rule(nn.Conv2d(3, 4, 1)).__name__, table.is_leaf(nn.Conv2d(3, 4, 1))
        ('_conv', False)
    """

    def __init__(self, rules: Mapping[type[nn.Module], Rule] | None = None, *,
                 plugins: bool = True) -> None:
        self._own = {_check_type(t): as_layer_rule(r, t) for t, r in (rules or {}).items()}
        self._plugins = plugins
        self._functions = function_table()
        self._described: dict[type, LayerRule | None] = {}

    def _described_rule(self, cls: type) -> LayerRule | None:
        """A rule given to this table, registered, or described by a plugin, for ``cls``
        exactly."""
        if cls in self._own:
            return self._own[cls]
        with _lock:
            registered = _registered.get(cls)
        if registered is not None:
            return registered
        if self._plugins:
            if cls not in self._described:
                spec = _plugin_rules().get(cls)
                self._described[cls] = channelwise_rule(spec) if spec is not None else None
            return self._described[cls]
        return None

    def _user_rule(self, module: nn.Module) -> LayerRule | None:
        for cls in type(module).__mro__:
            rule = self._described_rule(cls)
            if rule is not None:
                return rule
        return None

    def layer_rule(self, module: nn.Module) -> LayerRule | None:
        """The rule for ``module``: a described one first, else the built-in one of its
        nearest base class; None when no rule knows it."""
        rule = self._user_rule(module)
        if rule is not None:
            return rule
        for cls in type(module).__mro__:
            if cls in LAYER_RULES:
                return LAYER_RULES[cls]
        return None

    def is_leaf(self, module: nn.Module) -> bool:
        """Whether ``module`` is described by a registered or plugin rule (kept opaque)."""
        return self._user_rule(module) is not None

    def function_rule(self, target: Any) -> FunctionRule | None:
        """The built-in rule for a function or tensor method."""
        try:
            return self._functions.get(target)
        except TypeError:  # an unhashable target
            return None


def default_rules() -> RuleTable:
    """A table with the built-in, registered and plugin-described rules.

    Example:
        >>> default_rules().layer_rule(nn.ReLU()).__name__
        'passthrough'
    """
    return RuleTable()
