"""The hook specifications every sconce plugin implements a subset of.

A plugin is a module (declared under the ``sconce`` entry-point group) whose functions are
marked with :data:`hookimpl` and named after the specifications below. Registration hooks
receive a ``register`` callback so one plugin can contribute many things; each registered
item is checked (a technique against :func:`sconce.technique.validate_technique`), and one
that fails is skipped with a warning naming the plugin while its other items stay.

The core calls these hooks only from its top layer (:mod:`sconce.api`, the pipeline, the
CLI): lower layers receive what the hooks answered (the model adapter, the footprint hook,
the registered tables) as arguments. A plugin imports ``sconce`` and nothing of another
plugin (import-linter holds both rules in the lint session).

Example:
    A plugin module that adds one technique::

        import sconce

        @sconce.hookimpl
        def sconce_register_techniques(register):
            register(MyTechnique())
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    import click
    from torch import nn

    from sconce.adapter import ModelAdapter
    from sconce.footprint import Footprint
    from sconce.layers import ChannelwiseLayer
    from sconce.metrics.base import Metric
    from sconce.report import StageResult
    from sconce.technique import TechniqueProtocol

PROJECT = "sconce"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def sconce_register_techniques(register: Callable[[TechniqueProtocol], None]) -> None:
    """Offer compression techniques.

    Called once, when plugins are loaded (:func:`sconce.load_plugins`). Call
    ``register(technique)`` once per technique (the contract is :mod:`sconce.technique`).
    A technique that breaks the protocol (an undotted name, an unknown kind, a Config that does
    not build from its defaults, an ``apply`` or ``restore`` with the wrong arguments) is
    skipped with a warning; registering a name twice is a :class:`~sconce.errors.PluginError`.
    The return value is ignored.
    """


@hookspec
def sconce_register_metrics(register: Callable[[Metric], None]) -> None:
    """Offer metrics: extra columns of the report (spike rate, SynOps, ...).

    Called once, when plugins are loaded. Call ``register(metric)`` once per metric. Metrics
    registered here are measured by :func:`sconce.measure` and the pipeline when asked for by
    name, and by default when their ``default`` attribute is true. The return value is ignored.
    """


@hookspec
def sconce_register_datasets(register: Callable[[str, Callable[..., Any]], None]) -> None:
    """Offer named datasets usable from the CLI (``--data NAME``) and the Python API.

    Called once, when plugins are loaded. Call ``register(name, factory)``; ``factory(**options)``
    returns a :class:`sconce.Data` and is only called when the dataset is asked for, so loading
    plugins never reads data. The return value is ignored.
    """


@hookspec
def sconce_register_models(register: Callable[[str, Callable[..., nn.Module]], None]) -> None:
    """Offer named models usable from the CLI (``--model NAME``) and the Python API.

    Called once, when plugins are loaded. Call ``register(name, factory)``; the factory takes
    the keyword arguments ``num_classes``, ``in_channels`` and ``image_size`` (taken from the
    data) and returns an untrained ``nn.Module``. The return value is ignored.
    """


@hookspec(firstresult=True)
def sconce_model_adapter(model: nn.Module) -> ModelAdapter | None:
    """Return the adapter that knows how to run ``model``, or ``None`` to pass.

    Called once per model handed to :func:`sconce.compress`, :func:`sconce.measure` or
    :func:`sconce.train`, and by :func:`sconce.compress` again on the model each stage
    returns (a stage may change how the model runs: an ANN converted into a spiking network),
    unless the caller gives an adapter. The first non-``None`` answer wins; when every plugin
    returns ``None`` the model is run as a plain classifier (:class:`sconce.ClassifierAdapter`).
    """


@hookspec
def sconce_register_commands(cli: click.Group) -> None:
    """Add subcommands to the ``sconce`` command.

    Called each time the CLI is built (when ``sconce`` runs), never at import. Use
    ``cli.add_command(command)`` or the ``@cli.command()`` decorator. The return value is
    ignored.
    """


@hookspec
def sconce_stage_finished(stage: StageResult, model: nn.Module, metrics: Mapping[str, Any]) -> None:
    """Observe the end of a pipeline stage: trackers, loggers, dashboards.

    Called by :func:`sconce.compress` after the baseline and after every stage, once the
    stage's model is measured and checkpointed. ``metrics`` maps metric names to measured
    values (``None`` where a metric could not be measured). Observers must not modify the
    model. The return value is ignored.
    """


@hookspec(firstresult=True)
def sconce_module_footprint(module: nn.Module) -> Footprint | None:
    """Return the true storage of ``module``'s own tensors, or ``None`` to use the default.

    Called by the params, non-zero params, sparsity and size metrics for every module of a
    model, without recursing (children are asked separately). Plugins whose modules store
    weights in ways the default (dense parameters and persistent buffers) cannot see, such as
    packed int8/int4 weights or compressed sparse storage, answer for those modules. The
    first non-``None`` answer wins.
    """


@hookspec
def sconce_register_layer_rules(
    register: Callable[[type[nn.Module], ChannelwiseLayer], None],
) -> None:
    """Describe the channel structure of layer types a plugin owns (spiking neurons, ...).

    Called once, when plugins are loaded, and read by structural techniques (channel
    pruning, architecture search) through ``sconce.plugins.registry().layer_rules``. Call
    ``register(module_type, rule)`` with a :class:`sconce.ChannelwiseLayer`; instances of
    ``module_type`` and its subclasses then follow the rule and are not traced into. Describing
    a type twice is a :class:`~sconce.errors.PluginError`. The return value is ignored.
    """


HOOK_NAMES: tuple[str, ...] = tuple(
    name for name in list(globals()) if name.startswith("sconce_") and callable(globals()[name])
)
