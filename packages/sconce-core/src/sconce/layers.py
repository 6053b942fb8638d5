"""How a plugin describes the channel structure of a layer type it owns.

Structural techniques (channel pruning, architecture search) must know how channels flow
through every layer of a model. Layers from torch are known to them; a plugin that brings its
own layer types (spiking neurons, custom activations) describes them here, through the
``sconce_register_layer_rules`` hook, without importing any other plugin.

A :class:`ChannelwiseLayer` is a layer that acts on each channel on its own: every tensor it
returns has the channels of its first input, on the same axis, and every other tensor input
(a recurrent state, say) carries the same channels. The parameters and buffers it names hold
one entry per channel along their first dimension (when they have more than one element) and
are sliced together with the channels; the layer is not traced into.

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
            left as is). Names the module does not have are ignored.
        channel_axis: the channel axis of the inputs and outputs (1 for ``N, C, ...``
            layouts, -1 for ``..., C``).

    Example:
        >>> ChannelwiseLayer(per_channel=("weight",), channel_axis=-1).channel_axis
        -1
    """

    per_channel: tuple[str, ...] = ()
    channel_axis: int = 1

    def __post_init__(self) -> None:
        names: object = self.per_channel  # checked as given: users pass lists and strings
        if not isinstance(names, tuple) or not all(isinstance(n, str) and n for n in names):
            raise TypeError("per_channel must be a tuple of attribute names, "
                            f"got {self.per_channel!r}")
        if not isinstance(self.channel_axis, int):
            raise TypeError(f"channel_axis must be an int, got {self.channel_axis!r}")
