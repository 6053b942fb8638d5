"""The channel structure of snnTorch neurons, for structural techniques (channel pruning).

Every supported neuron acts on each channel on its own: its spikes and membrane keep the
channels of its input current, and its explicit states (when passed) carry the same ones.
Its learnable constants may hold one value per channel (a conv layer's ``beta`` of shape
``(C, 1, 1)``, say); they are named here so they are sliced together with the channels. The
recurrent neurons add their recurrent connection: one weight per channel (``V``) when
``all_to_all=False``, a channel-to-channel ``nn.Linear`` / ``nn.Conv2d`` otherwise.

Example:
    >>> import snntorch as snn
    >>> rules = dict(neuron_layer_rules())
    >>> rules[snn.Leaky].per_channel
    ('threshold', 'graded_spikes_factor', 'beta')
"""

from __future__ import annotations

from collections.abc import Iterator

from torch import nn

from sconce.layers import ChannelwiseLayer

_SPIKING = ("threshold", "graded_spikes_factor")
_RECURRENT_ONE_TO_ONE = ("V", "recurrent.V")
_RECURRENT_ALL_TO_ALL = ("recurrent.bias",)


def neuron_layer_rules() -> Iterator[tuple[type[nn.Module], ChannelwiseLayer]]:
    """``(neuron class, rule)`` for every neuron the adapter supports.

    Example:
        >>> len(list(neuron_layer_rules()))
        6
    """
    import snntorch as snn

    yield snn.Leaky, ChannelwiseLayer(per_channel=(*_SPIKING, "beta"))
    yield snn.Synaptic, ChannelwiseLayer(per_channel=(*_SPIKING, "alpha", "beta"))
    yield snn.Lapicque, ChannelwiseLayer(per_channel=(*_SPIKING, "beta", "R", "C"))
    yield snn.Alpha, ChannelwiseLayer(per_channel=(*_SPIKING, "alpha", "beta"))
    recurrent = (*_RECURRENT_ONE_TO_ONE, *_RECURRENT_ALL_TO_ALL)
    yield snn.RLeaky, ChannelwiseLayer(per_channel=(*_SPIKING, "beta", *recurrent),
                                       recurrent=("recurrent.weight",))
    yield snn.RSynaptic, ChannelwiseLayer(per_channel=(*_SPIKING, "alpha", "beta", *recurrent),
                                          recurrent=("recurrent.weight",))
