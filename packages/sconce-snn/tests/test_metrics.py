"""SNN metrics: spike rates, SynOps counted exactly on planted spike trains, energy."""

from __future__ import annotations

import itertools

import pytest
import snntorch as snn
import torch
from snn_helpers import relu_cnn
from torch import nn

import sconce
from sconce_snn import SpikingAdapter
from sconce_snn.activity import profile_activity, synaptic_ops
from sconce_snn.energy import PJ_AC, PJ_MAC
from sconce_snn.metrics import ACTIVITY_SAMPLES


def brute_force_conv_ops(mask: torch.Tensor, weight: torch.Tensor, stride: int,
                         padding: int, groups: int) -> int:
    """(input spike, existing synapse, output position) triples, by looping over them."""
    batch, _, height, width = mask.shape
    out_channels, per_group, kh, kw = weight.shape
    out_h = (height + 2 * padding - kh) // stride + 1
    out_w = (width + 2 * padding - kw) // stride + 1
    count = 0
    for n, o, y, x in itertools.product(range(batch), range(out_channels), range(out_h),
                                        range(out_w)):
        group = o // (out_channels // groups)
        for c, i, j in itertools.product(range(per_group), range(kh), range(kw)):
            row, col = y * stride + i - padding, x * stride + j - padding
            if 0 <= row < height and 0 <= col < width and weight[o, c, i, j] != 0 \
                    and mask[n, group * per_group + c, row, col] != 0:
                count += 1
    return count


@pytest.mark.parametrize(("stride", "padding", "groups"), [(1, 0, 1), (2, 1, 1), (1, 1, 2)])
def test_synops_of_a_conv_match_brute_force(stride: int, padding: int, groups: int) -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3, stride=stride, padding=padding, groups=groups)
    with torch.no_grad():
        conv.weight.mul_(torch.rand_like(conv.weight) > 0.4)  # pruned synapses do not count
    mask = (torch.rand(2, 4, 7, 6) > 0.7).float()
    assert synaptic_ops(conv, mask) == brute_force_conv_ops(mask, conv.weight, stride,
                                                            padding, groups)


def planted_network() -> nn.Sequential:
    """Input neurons that spike exactly where the (constant) input exceeds 0.5, every step
    (beta 0, threshold 0.5, no reset), then a conv and a linear layer of known synapses."""
    conv = nn.Conv2d(1, 2, 2, bias=False)
    linear = nn.Linear(2 * 2 * 2, 3, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]], [[[1.0, 1.0], [1.0, 1.0]]]]))
        linear.weight.fill_(0.0)
        linear.weight[0, :3] = 1.0  # the first three conv outputs reach output 0 only
    return nn.Sequential(
        snn.Leaky(beta=0.0, threshold=0.5, reset_mechanism="none", init_hidden=True), conv,
        snn.Leaky(beta=0.0, threshold=0.5, reset_mechanism="none", init_hidden=True),
        nn.Flatten(), linear,
        snn.Leaky(beta=0.0, threshold=1e9, init_hidden=True))


def test_synops_and_spike_rates_on_a_planted_spike_train() -> None:
    model = planted_network()
    image = torch.tensor([[[[1.0, 0.0, 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]]]])
    steps = 4
    activity = profile_activity(model, image, SpikingAdapter(num_steps=steps))
    # layer 0 spikes at the three bright pixels every step: 3 of 9 neurons
    assert activity.spike_rates["0"] == pytest.approx(3 / 9)
    # conv, diagonal kernel: the centre spike reaches 2 outputs, the top-left corner 1, the
    # top-right corner none (its only output is through a zero weight); all-ones kernel:
    # the centre reaches 4 outputs, each corner 1
    assert activity.synops["1"] == steps * ((2 + 1 + 0) + (4 + 1 + 1))
    # conv outputs: channel 0 = [[2, 0], [0, 1]], channel 1 = [[2, 2], [1, 1]]: all but two > 0.5
    assert activity.spikes["2"] == steps * 6
    # linear: of the spiking conv outputs (flat 0, 3, 4, 5, 6, 7) only #0 has a synapse
    assert activity.synops["4"] == steps * 1
    assert activity.dense_macs == {}  # every synaptic layer is fed spikes
    assert activity.ann_macs == {"1": 2 * 4 * 4, "4": 3 * 8}


def test_synops_of_a_one_to_one_recurrent_connection() -> None:
    """An RLeaky's one-to-one recurrent connection feeds each neuron's last spike back
    through its own weight V: one synapse per neuron, none where V is zero."""
    neuron = snn.RLeaky(beta=0.0, threshold=0.5, V=torch.tensor([1.0, 0.0, 2.0]),
                        all_to_all=False, reset_mechanism="none", init_hidden=True)
    model = nn.Sequential(snn.Leaky(beta=0.0, threshold=0.5, reset_mechanism="none",
                                    init_hidden=True), nn.Linear(3, 3, bias=False), neuron)
    with torch.no_grad():
        model[1].weight.copy_(torch.eye(3))
    steps = 4
    activity = profile_activity(model, torch.tensor([[1.0, 1.0, 0.0]]),
                                SpikingAdapter(num_steps=steps))
    # neurons 0 and 1 spike at every step; from the second step their last spikes come
    # back, and only neuron 0's has a synapse (V[1] = 0)
    assert activity.spikes["2"] == steps * 2
    assert activity.synops["2.recurrent"] == (steps - 1) * 1
    assert activity.ann_macs["2.recurrent"] == 3


def test_an_analog_first_layer_counts_macs_and_energy_follows_the_counts() -> None:
    model = nn.Sequential(*list(planted_network())[1:])  # the conv now sees the image
    image = torch.rand(1, 1, 3, 3) + 0.1
    activity = profile_activity(model, image, SpikingAdapter(num_steps=2))
    assert activity.dense_macs["0"] == 2 * (2 * 4 + 4 * 4)  # every input, each step
    values = sconce.measure(model, example_inputs=image, adapter=SpikingAdapter(num_steps=2),
                            metrics=["energy", "synops"])
    updates = sum(activity.neuron_updates.values())
    expected = (activity.dense_macs["0"] * PJ_MAC[32] + values["synops"] * PJ_AC[32]
                + updates * PJ_MAC[32]) / 1e6
    assert values["energy"] == pytest.approx(expected)


def test_snn_metrics_do_not_apply_to_anns(data) -> None:
    values = sconce.measure(relu_cnn(), data, metrics=["spike_rate", "synops", "params"])
    assert set(values) == {"params"}
    result = sconce.compress(relu_cnn(), data, recipe=[], progress=False,
                             metrics=["accuracy", "spike_rate", "energy"])
    assert [m.name for m in result.report.metrics] == ["accuracy"]


def test_spike_rate_per_layer_in_the_report(trained_snn, data) -> None:
    result = sconce.compress(trained_snn, data, recipe=[], progress=False,
                             metrics=["spike_rate", "synops", "ann_macs", "energy"])
    original = result.report.stages[0]
    assert set(original.notes["spike rate per layer (%)"]) == {"lif1", "lif2"}
    assert 0 < original.values["spike_rate"] < 100
    assert original.values["synops"] > 0 and original.values["energy"] > 0
    assert original.values["ann_macs"] == pytest.approx(6 * 9 * 64 + 4 * 96)
    assert ACTIVITY_SAMPLES >= 128  # measured on real samples, not one
