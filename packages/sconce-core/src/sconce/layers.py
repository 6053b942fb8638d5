"""How a plugin describes the channel structure of a layer type it owns.

Structural techniques (channel pruning, architecture search) must know how channels flow
through every layer of a model. Layers from torch are known to them; a plugin that brings its
own layer types (spiking neurons, custom activations) describes them here, through the
``sconce_register_layer_rules`` hook, without importing any other plugin.

A :class:`ChannelwiseLayer` is a layer that acts on each channel on its own: every tensor it
returns has the channels of its first input, on the same axis, and every other tensor input
(a recurrent state, say) carries the same channels. The parameters and buffers it names hold
one entry per channel along their first dimension (when they have more than one element) and
are sliced together with the channels; the layer is not traced into. A layer may also hold
weights that connect its channels to one another (a spiking neuron's all-to-all recurrent
connection, output channel by input channel): those it names in ``recurrent`` are sliced
along their first two dimensions.

Example:
    >>> from torch import nn
    >>> rule = ChannelwiseLayer(per_channel=("beta", "threshold"))
    >>> rule.channel_axis, rule.per_channel
    (1, ('beta', 'threshold'))
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ChannelwiseLayer"]


@dataclass(frozen=True)
class ChannelwiseLayer:
    """A layer that keeps channels where they are and acts on each one separately.

    Attributes:
        per_channel: names of parameters or buffers with one entry per channel along their
            first dimension (a tensor with a single element is shared by every channel and
            left as is). Names may be dotted paths into submodules (``recurrent.bias``).
            Names the module does not have are ignored.
        channel_axis: the channel axis of the inputs and outputs (1 for ``N, C, ...``
            layouts, -1 for ``..., C``).
        recurrent: names (dotted paths allowed) of weights whose first two dimensions both
            run over the channels (output channel, input channel), sliced along both. Names
            the module does not have are ignored.

    Example:
        >>> ChannelwiseLayer(per_channel=("weight",), channel_axis=-1).channel_axis
        -1
        >>> ChannelwiseLayer(per_channel=("V", "recurrent.bias"),
        ...                  recurrent=("recurrent.weight",)).recurrent
        ('recurrent.weight',)
    """

    per_channel: tuple[str, ...] = ()
    channel_axis: int = 1
    recurrent: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for field_name in ("per_channel", "recurrent"):
            names: object = getattr(self, field_name)  # checked as given: users pass lists
            if not isinstance(names, tuple) or not all(isinstance(n, str) and n for n in names):
                raise TypeError(f"{field_name} must be a tuple of attribute names, "
                                f"got {names!r}")
        if not isinstance(self.channel_axis, int):
            raise TypeError(f"channel_axis must be an int, got {self.channel_axis!r}")
