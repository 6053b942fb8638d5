"""sconce-snn: spiking neural networks (snnTorch) through sconce's compression pipeline.

Example:
    >>> import sconce, sconce_snn
    >>> isinstance(sconce.get_adapter(sconce_snn.models.spiking_cnn()), sconce_snn.SpikingAdapter)
    True
"""

from __future__ import annotations

from sconce_snn.adapter import SpikeRecord, SpikingAdapter
from sconce_snn.neurons import UnsupportedSpikingModel, describe_model, reset_states

__version__ = "0.1.0"

__all__ = ["SpikeRecord", "SpikingAdapter", "UnsupportedSpikingModel", "__version__",
           "describe_model", "reset_states"]
