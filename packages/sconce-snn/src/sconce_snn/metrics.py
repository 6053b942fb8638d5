"""Report columns for spiking networks: spike rate, SynOps, ANN-equivalent MACs, energy.

All four read one :func:`~sconce_snn.activity.profile_activity` run per model (cached), on
the first :data:`ACTIVITY_SAMPLES` inputs of the data (the test split when there is one),
through the run's adapter. For models without spiking neurons they do not apply and the
report leaves them out. The spike rate metric also notes the rate of every spiking layer.

Example:
    >>> import snntorch as snn
    >>> from torch import nn
    >>> from sconce.context import Context
    >>> from sconce_snn.adapter import SpikingAdapter
    >>> model = nn.Sequential(nn.Linear(4, 3), snn.Leaky(beta=0.5, init_hidden=True))
    >>> ctx = Context.for_inputs(torch.ones(1, 4), adapter=SpikingAdapter(num_steps=4))
    >>> SpikeRate().measure(model, ctx) >= 0
    True
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import torch
from torch import nn

from sconce.metrics import Metric, MetricNotApplicable, MetricUnavailable
from sconce.runtime import model_device
from sconce_snn.activity import Activity, UncountedLayers, cached_activity
from sconce_snn.energy import neuron_energy_pj, operation_energy_pj
from sconce_snn.neurons import describe_model

if TYPE_CHECKING:
    from sconce.context import Context

logger = logging.getLogger(__name__)

ACTIVITY_SAMPLES = 256
"""Samples the activity metrics run on."""
PJ_PER_UJ = 1e6


def activity_of(model: nn.Module, ctx: Context) -> Activity:
    """The model's activity on the context's first :data:`ACTIVITY_SAMPLES` inputs.

    Raises:
        MetricNotApplicable: the model has no spiking neurons.
        MetricUnavailable: its weighted layers cannot all be counted.

    Example:
        >>> from sconce.context import Context
        >>> activity_of(nn.Linear(2, 2), Context.for_inputs(torch.ones(1, 2)))
        Traceback (most recent call last):
        ...
        sconce.metrics.base.MetricNotApplicable: not a spiking network
    """
    if describe_model(model) is None:
        raise MetricNotApplicable("not a spiking network")
    inputs_key = (id(ctx.data), id(ctx.inputs), ACTIVITY_SAMPLES)

    def inputs() -> torch.Tensor:
        batch = ctx.example_inputs(ACTIVITY_SAMPLES)
        return ctx.adapter.to_device(batch, model_device(model, ctx.device))

    try:
        return cached_activity(model, inputs_key, inputs, ctx.adapter)
    except UncountedLayers as exc:
        raise MetricUnavailable(f"cannot count the synaptic operations of {exc}") from None


class SpikeRate(Metric):
    """Spikes per neuron per time step, over every spiking layer (each layer's in the notes).

    Example:
        >>> SpikeRate().unit
        '%'
    """

    name, label, unit = "spike_rate", "Spike rate", "%"
    digits = 2

    def measure(self, model: nn.Module, ctx: Context) -> float:
        activity = activity_of(model, ctx)
        ctx.note("spike rate per layer (%)",
                 {name: round(100 * rate, 2) for name, rate in activity.spike_rates.items()})
        return 100.0 * activity.spike_rate


class SynOps(Metric):
    """Synaptic operations per sample: spikes x the existing synapses each one reaches.

    Example:
        >>> SynOps().display_unit
        'M'
    """

    name, label, unit = "synops", "SynOps", "ops/sample"
    digits = 3
    display_scale, display_unit = 1e6, "M"

    def measure(self, model: nn.Module, ctx: Context) -> float:
        return activity_of(model, ctx).total_synops


class AnnMacs(Metric):
    """Multiply-accumulates of one time step of the synaptic layers: the same network as an
    ANN, for comparison with SynOps.

    Example:
        >>> AnnMacs().name
        'ann_macs'
    """

    name, label, unit = "ann_macs", "MACs (ANN-equivalent)", "MACs"
    digits = 3
    display_scale, display_unit = 1e6, "M"

    def measure(self, model: nn.Module, ctx: Context) -> float:
        return sum(activity_of(model, ctx).ann_macs.values())


class Energy(Metric):
    """Arithmetic energy per sample, from counted operations and Horowitz (ISSCC 2014)
    45 nm figures (see :mod:`sconce_snn.energy`).

    Example:
        >>> Energy().unit
        'uJ/sample'
    """

    name, label, unit = "energy", "Energy (est.)", "uJ/sample"
    digits = 3

    def measure(self, model: nn.Module, ctx: Context) -> float:
        activity = activity_of(model, ctx)
        picojoules = sum(
            operation_energy_pj(synops=activity.synops.get(name, 0.0),
                                dense_macs=activity.dense_macs.get(name, 0.0),
                                weight_bits=bits)
            for name, bits in activity.weight_bits.items())
        picojoules += sum(neuron_energy_pj(updates, activity.state_bits.get(name, 32))
                          for name, updates in activity.neuron_updates.items())
        return picojoules / PJ_PER_UJ


SNN_METRICS: tuple[Metric, ...] = (SpikeRate(), SynOps(), AnnMacs(), Energy())
