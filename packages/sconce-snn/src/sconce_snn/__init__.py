"""sconce-snn: spiking neural networks (snnTorch) through sconce's compression pipeline.

The plugin (entry point ``snn``) gives the core a :class:`SpikingAdapter` for every model
holding snnTorch neurons, the ``snn.convert``, ``snn.int8_weights`` and ``snn.state_quant``
techniques, the spike rate / SynOps / ANN-equivalent MACs / energy metrics, and the channel
structure of the neurons for structural techniques.

Example:
    >>> import sconce, sconce_snn
    >>> model = sconce_snn.models.spiking_cnn(num_classes=10, in_channels=1, image_size=28)
    >>> isinstance(sconce.get_adapter(model), sconce_snn.SpikingAdapter)
    True
"""

from __future__ import annotations

from sconce_snn import models
from sconce_snn.activity import Activity, profile_activity
from sconce_snn.adapter import SpikeRecord, SpikingAdapter
from sconce_snn.convert import Conversion, ConvertConfig, IFNeuron, SpikingMaxPool2d
from sconce_snn.int8 import Int8Conv, Int8Linear, Int8Weights, Int8WeightsConfig
from sconce_snn.metrics import AnnMacs, Energy, SpikeRate, SynOps
from sconce_snn.neurons import UnsupportedSpikingModel, describe_model, reset_states
from sconce_snn.state_quant import StateQuantConfig, StateQuantization, StateQuantizer
from sconce_snn.steps import accuracy_by_steps, plot_accuracy_by_steps

__version__ = "0.1.0"

__all__ = [
    "Activity", "AnnMacs", "Conversion", "ConvertConfig", "Energy", "IFNeuron", "Int8Conv",
    "Int8Linear", "Int8Weights", "Int8WeightsConfig", "SpikeRate", "SpikeRecord",
    "SpikingAdapter", "SpikingMaxPool2d", "StateQuantConfig", "StateQuantization",
    "StateQuantizer", "SynOps", "UnsupportedSpikingModel", "__version__", "accuracy_by_steps",
    "describe_model", "models", "plot_accuracy_by_steps", "profile_activity", "reset_states",
]
