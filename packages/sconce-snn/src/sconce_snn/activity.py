"""What a spiking network does on real inputs: spikes per layer and synaptic operations.

:func:`profile_activity` runs the model through its adapter with forward hooks on every
spiking neuron and every synaptic layer (convolutions, linear layers, quantized versions of
them) and counts, per sample:

* **spikes** of each neuron layer, and its **spike rate**: spikes / (neurons x time steps);
* **SynOps** of each synaptic layer whose input is a spike train (every non-zero input is
  the same value): the accumulate operations those spikes trigger, i.e. for each spike the
  number of existing (non-zero) synapses it reaches, counted exactly, borders, strides and
  groups included (a convolution of the spike mask with the non-zero pattern of the weight);
* **dense MACs** of each synaptic layer whose input is analog (the directly encoded first
  layer): every input value times the synapses it reaches, as multiply-accumulates;
* **ANN-equivalent MACs**: the multiply-accumulates of one time step of the same layers run
  as an ANN (every weight, zero or not);
* **neuron updates**: neurons x time steps.

Example:
    >>> import snntorch as snn
    >>> from torch import nn
    >>> from sconce_snn.adapter import SpikingAdapter
    >>> model = nn.Sequential(nn.Linear(4, 3), snn.Leaky(beta=0.5, init_hidden=True),
    ...                       nn.Linear(3, 2), snn.Leaky(beta=0.5, init_hidden=True))
    >>> activity = profile_activity(model, torch.ones(1, 4), SpikingAdapter(num_steps=5))
    >>> sorted(activity.spike_rates), activity.steps
    (['1', '3'], 5)
"""

from __future__ import annotations

import logging
import weakref
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from sconce.adapter import ModelAdapter
from sconce_snn.neurons import is_spiking_neuron

logger = logging.getLogger(__name__)

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_CONV_FUNCTIONS: dict[int, Callable[..., torch.Tensor]] = {1: F.conv1d, 2: F.conv2d,
                                                           3: F.conv3d}


@dataclass
class Activity:
    """Per-sample counts from :func:`profile_activity` (layer names are qualified names).

    Attributes:
        samples: samples the counts are averaged over.
        steps: time steps per sample.
        neurons: neurons of each spiking layer.
        spikes: spikes of each spiking layer per sample, over all time steps.
        synops: spike-driven accumulates of each synaptic layer per sample.
        dense_macs: multiply-accumulates of synaptic layers fed analog values, per sample.
        ann_macs: multiply-accumulates of one time step of every synaptic layer (all weights).
        weight_bits: bits per weight of each synaptic layer (32 for float).
        state_bits: bits per neuron state of each spiking layer (32 unless quantized).

    Example:
        >>> Activity(steps=2, neurons={"lif": 4}, spikes={"lif": 2.0}).spike_rate
        0.25
    """

    samples: int = 0
    steps: int = 0
    neurons: dict[str, int] = field(default_factory=dict)
    spikes: dict[str, float] = field(default_factory=dict)
    synops: dict[str, float] = field(default_factory=dict)
    dense_macs: dict[str, float] = field(default_factory=dict)
    ann_macs: dict[str, float] = field(default_factory=dict)
    weight_bits: dict[str, int] = field(default_factory=dict)
    state_bits: dict[str, int] = field(default_factory=dict)

    @property
    def spike_rates(self) -> dict[str, float]:
        """Spikes per neuron per time step, by spiking layer (a fraction in [0, 1])."""
        return {name: self.spikes[name] / (count * self.steps) if count and self.steps else 0.0
                for name, count in self.neurons.items()}

    @property
    def spike_rate(self) -> float:
        """Spikes per neuron per time step over the whole network."""
        total = sum(self.neurons.values()) * self.steps
        return sum(self.spikes.values()) / total if total else 0.0

    @property
    def total_synops(self) -> float:
        """Spike-driven accumulates per sample, every layer."""
        return sum(self.synops.values())

    @property
    def neuron_updates(self) -> dict[str, float]:
        """State updates per sample (neurons x time steps), by spiking layer."""
        return {name: float(count * self.steps) for name, count in self.neurons.items()}


class UncountedLayers(Exception):
    """The model has weighted layers whose synaptic operations cannot be counted.

    Example:
        >>> str(UncountedLayers("emb (Bilinear)"))
        'emb (Bilinear)'
    """


def weight_of(module: nn.Module) -> torch.Tensor | None:
    """The float weight of a synaptic layer (dequantized for layers storing integers).

    Example:
        >>> weight_of(nn.Linear(3, 2)).shape
        torch.Size([2, 3])
    """
    if synapse_kind(module) == "elementwise":
        return cast(torch.Tensor, module.V)
    dequantize = getattr(module, "dequantized_weight", None)
    if callable(dequantize):
        weight = dequantize()
        return weight if isinstance(weight, torch.Tensor) else None
    weight = getattr(module, "weight", None)
    return weight if isinstance(weight, torch.Tensor) else None


def synapse_kind(module: nn.Module) -> str | None:
    """``"linear"``, ``"conv"``, ``"elementwise"`` (snnTorch's one-to-one recurrent
    connection: each neuron's spike times its own weight ``V``) or None (not a synaptic
    layer) for ``module``.

    Example:
        >>> synapse_kind(nn.Conv2d(1, 2, 3)), synapse_kind(nn.ReLU())
        ('conv', None)
    """
    if type(module).__name__ == "RecurrentOneToOne" and isinstance(
            getattr(module, "V", None), torch.Tensor):
        return "elementwise"
    if isinstance(module, _CONV) or getattr(module, "synapse_kind", None) == "conv":
        return "conv"
    if isinstance(module, nn.Linear) or getattr(module, "synapse_kind", None) == "linear":
        return "linear"
    if callable(getattr(module, "dequantized_weight", None)) and hasattr(module, "in_features"):
        return "linear"  # weight-only quantized linear layers of other plugins
    return None


def _is_spike_train(x: torch.Tensor) -> bool:
    """Every non-zero value is one and the same positive number (a spike of some height)."""
    nonzero = x[x != 0]
    if nonzero.numel() == 0:
        return True
    height = nonzero[0]
    return bool(height > 0) and bool((nonzero == height).all())


def synaptic_ops(module: nn.Module, active: torch.Tensor) -> float:
    """Accumulates triggered by the non-zero entries of ``active`` (a layer input), over the
    existing synapses of ``module``, summed over the batch.

    Example:
        >>> layer = nn.Linear(3, 2)
        >>> with torch.no_grad(): layer.weight[0, 0] = 0.0
        >>> synaptic_ops(layer, torch.tensor([[1.0, 0.0, 1.0]]))  # 1 + 2 synapses
        3.0
    """
    weight = weight_of(module)
    if weight is None:
        raise UncountedLayers(type(module).__name__)
    synapses = (weight.detach() != 0).to(torch.float32)
    mask = (active.detach() != 0).to(torch.float32)
    if synapse_kind(module) == "elementwise":  # one synapse per neuron, to itself
        return float((mask * synapses).sum())
    if synapse_kind(module) == "linear":
        per_input = synapses.sum(dim=0)  # synapses leaving each input
        return float(mask.reshape(-1, mask.shape[-1]).sum(dim=0) @ per_input)
    dims = synapses.dim() - 2
    conv: Any = module  # a torch convolution or an int8 one: the same settings
    padding = conv.padding
    if getattr(conv, "padding_mode", "zeros") != "zeros":
        mask = F.pad(mask, conv._reversed_padding_repeated_twice, mode=conv.padding_mode)
        padding = 0
    reached = _CONV_FUNCTIONS[dims](mask, synapses, None, conv.stride, padding, conv.dilation,
                                    conv.groups)
    return float(reached.sum())


def ann_macs(module: nn.Module, output: torch.Tensor) -> float:
    """Multiply-accumulates of one dense pass of ``module`` that produced ``output``, for the
    whole batch (every weight counted, zero or not).

    Example:
        >>> ann_macs(nn.Linear(3, 2), torch.zeros(4, 2))
        24.0
    """
    weight = weight_of(module)
    if weight is None:
        raise UncountedLayers(type(module).__name__)
    if synapse_kind(module) == "elementwise":
        return float(output.numel())
    if synapse_kind(module) == "linear":
        return float(output.numel() * weight.shape[1])
    return float(output.numel() * weight[0].numel())


def _bits(owner: Any, attribute: str) -> int:
    bits = getattr(owner, attribute, None)
    return int(bits) if isinstance(bits, int) else 32


class _Recorder:
    """Forward hooks that accumulate counts into an :class:`Activity`."""

    def __init__(self, model: nn.Module) -> None:
        self.activity = Activity()
        self.calls: dict[str, int] = defaultdict(int)
        self.uncounted: list[str] = []
        self.handles: list[Any] = []
        for name, module in model.named_modules():
            if is_spiking_neuron(module):
                self.activity.state_bits[name] = _bits(getattr(module, "state_quant", None),
                                                       "bits")
                self.handles.append(module.register_forward_hook(self._neuron(name)))
            elif synapse_kind(module) is not None:
                self.activity.weight_bits[name] = _bits(module, "bits")
                self.handles.append(module.register_forward_hook(self._synapse(name, module)))
            elif _looks_weighted(module):
                self.uncounted.append(f"{name} ({type(module).__name__})")

    def _neuron(self, name: str) -> Callable[..., None]:
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            spikes = output[0] if isinstance(output, (tuple, list)) else output
            self.activity.neurons[name] = int(spikes[0].numel())
            self.activity.spikes[name] = self.activity.spikes.get(name, 0.0) + float(
                (spikes != 0).sum())
            self.calls[name] += 1
        return hook

    def _synapse(self, name: str, module: nn.Module) -> Callable[..., None]:
        dense: dict[tuple[int, ...], float] = {}  # analog inputs reach every synapse

        def hook(_: nn.Module, inputs: Any, output: Any) -> None:
            x = inputs[0]
            if _is_spike_train(x):
                ops, key = synaptic_ops(module, x), "synops"
            else:
                shape = tuple(x.shape)
                if shape not in dense:
                    dense[shape] = synaptic_ops(module, torch.ones_like(x))
                ops, key = dense[shape], "dense_macs"
            table: dict[str, float] = getattr(self.activity, key)
            table[name] = table.get(name, 0.0) + ops
            if self.calls[name] == 0:
                self.activity.ann_macs[name] = ann_macs(module, output)
            self.calls[name] += 1
        return hook

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()


def _looks_weighted(module: nn.Module) -> bool:
    own = [t for t in (*module._parameters.values(), *module._buffers.values())
           if t is not None and t.dim() >= 2]
    return bool(own) and not isinstance(module, (nn.Embedding, nn.EmbeddingBag))


def profile_activity(model: nn.Module, inputs: Any, adapter: ModelAdapter) -> Activity:
    """Run ``model`` on ``inputs`` through ``adapter`` and count its activity per sample.

    Raises:
        UncountedLayers: the model has weighted layers that are neither convolutions nor
            linear layers (their names are in the message).

    Example:
        >>> import snntorch as snn
        >>> from sconce_snn.adapter import SpikingAdapter
        >>> lif = snn.Leaky(beta=0.0, threshold=0.5, reset_mechanism="none", init_hidden=True)
        >>> net = nn.Sequential(lif, nn.Linear(2, 3))  # input 0 spikes at every step
        >>> profile_activity(net, torch.tensor([[1.0, 0.0]]), SpikingAdapter(num_steps=4)).synops
        {'1': 12.0}
    """
    recorder = _Recorder(model)
    if recorder.uncounted:
        recorder.close()
        raise UncountedLayers(", ".join(recorder.uncounted))
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            adapter.forward(model, inputs)
    finally:
        recorder.close()
        model.train(was_training)
    activity = recorder.activity
    samples = int(inputs.shape[0])
    neuron_calls = [recorder.calls[name] for name in activity.neurons]
    activity.samples = samples
    activity.steps = max(neuron_calls, default=0)
    for table in (activity.spikes, activity.synops, activity.dense_macs, activity.ann_macs):
        for name in table:
            table[name] /= samples
    return activity


_CACHE: weakref.WeakKeyDictionary[nn.Module, tuple[Any, Activity]] = weakref.WeakKeyDictionary()


def cached_activity(model: nn.Module, inputs_key: Any, make_inputs: Callable[[], Any],
                    adapter: ModelAdapter) -> Activity:
    """:func:`profile_activity`, computed once per model state, inputs and adapter.

    The key holds every tensor of the model's state dict (identity and in-place version), so
    a model changed in place is profiled again.

    Example:
        >>> import snntorch as snn
        >>> from sconce_snn.adapter import SpikingAdapter
        >>> net, adapter = nn.Sequential(snn.Leaky(beta=0.5, init_hidden=True)), SpikingAdapter()
        >>> first = cached_activity(net, "x", lambda: torch.ones(1, 2), adapter)
        >>> cached_activity(net, "x", lambda: torch.ones(1, 2), adapter) is first
        True
    """
    state = tuple((name, t.data_ptr(), t._version)
                  for name, t in model.state_dict(keep_vars=True).items())
    key = (state, inputs_key, id(adapter), repr(adapter))
    hit = _CACHE.get(model)
    if hit is not None and hit[0] == key:
        return hit[1]
    activity = profile_activity(model, make_inputs(), adapter)
    _CACHE[model] = (key, activity)
    return activity
