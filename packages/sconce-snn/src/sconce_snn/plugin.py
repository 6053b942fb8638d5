"""The ``snn`` plugin: the spiking adapter, techniques, metrics and neuron layer rules."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from sconce import ChannelwiseLayer, Footprint, Metric, hookimpl
from sconce_snn.adapter import SpikingAdapter
from sconce_snn.neurons import describe_model


@hookimpl
def sconce_model_adapter(model: nn.Module) -> SpikingAdapter | None:
    """A :class:`SpikingAdapter` for models holding snnTorch neurons, else None.

    Raises:
        UnsupportedSpikingModel: the model uses snnTorch features the adapter cannot run.

    Example:
        >>> sconce_model_adapter(nn.Linear(2, 2)) is None
        True
    """
    if describe_model(model) is None:
        return None
    return SpikingAdapter.for_model(model)


@hookimpl
def sconce_register_models(register: Callable[[str, Callable[..., nn.Module]], None]) -> None:
    """Register ``snn-cnn``, the tutorial-style convolutional SNN."""
    from sconce_snn.models import spiking_cnn

    register("snn-cnn", spiking_cnn)


@hookimpl
def sconce_register_metrics(register: Callable[[Metric], None]) -> None:
    """Register the spike rate, SynOps, ANN-equivalent MACs and energy metrics."""
    from sconce_snn.metrics import SNN_METRICS

    for metric in SNN_METRICS:
        register(metric)


@hookimpl
def sconce_register_layer_rules(
    register: Callable[[type[nn.Module], ChannelwiseLayer], None],
) -> None:
    """Describe the channel structure of the supported snnTorch neurons."""
    from sconce_snn.layer_rules import neuron_layer_rules

    for module_type, rule in neuron_layer_rules():
        register(module_type, rule)


@hookimpl
def sconce_register_techniques(register: Callable[[Any], None]) -> None:
    """Register ``snn.convert``, ``snn.int8_weights`` and ``snn.state_quant``.

    Example:
        >>> names = []
        >>> sconce_register_techniques(lambda technique: names.append(technique.name))
        >>> names
        ['snn.convert', 'snn.int8_weights', 'snn.state_quant']
    """
    from sconce_snn.convert import Conversion
    from sconce_snn.int8 import Int8Weights
    from sconce_snn.state_quant import StateQuantization

    register(Conversion())
    register(Int8Weights())
    register(StateQuantization())


@hookimpl
def sconce_module_footprint(module: nn.Module) -> Footprint | None:
    """True storage of the int8 layers of ``snn.int8_weights``.

    Example:
        >>> sconce_module_footprint(nn.ReLU()) is None
        True
    """
    from sconce_snn.int8 import int8_footprint

    return int8_footprint(module)
