"""The channel structure sconce-snn describes for snnTorch neurons."""

from __future__ import annotations

import snntorch as snn
import torch

from sconce.plugins import registry


def _tensor(module: torch.nn.Module, dotted: str) -> torch.Tensor | None:
    owner_path, _, name = dotted.rpartition(".")
    owner = module.get_submodule(owner_path) if owner_path else module
    value = getattr(owner, name, None)
    return value if isinstance(value, torch.Tensor) else None


def test_every_supported_neuron_is_described() -> None:
    rules = registry().layer_rules
    for cls in (snn.Leaky, snn.Synaptic, snn.Lapicque, snn.Alpha, snn.RLeaky, snn.RSynaptic):
        assert rules[cls].channel_axis == 1


def test_per_channel_parameters_are_named_with_their_channel_dimension_first() -> None:
    channels = 5
    per_channel = torch.rand(channels, 1, 1)
    neurons = [
        snn.Leaky(beta=per_channel, learn_beta=True, threshold=per_channel + 1),
        snn.Synaptic(alpha=per_channel, beta=per_channel / 2, learn_alpha=True),
        snn.RLeaky(beta=per_channel, V=per_channel, all_to_all=False),
        snn.RLeaky(beta=per_channel, conv2d_channels=channels, kernel_size=3),
        snn.RSynaptic(alpha=per_channel, beta=per_channel / 2, linear_features=channels),
    ]
    for neuron in neurons:
        rule = registry().layer_rule(neuron)
        named = [(n, _tensor(neuron, n)) for n in rule.per_channel]
        sized = [n for n, t in named if t is not None and t.numel() > 1]
        assert sized and all(_tensor(neuron, n).shape[0] == channels for n in sized)
        for name in rule.recurrent:
            weight = _tensor(neuron, name)
            if weight is not None:
                assert weight.shape[:2] == (channels, channels)
