"""Which spiking neurons a model holds, how it is run, and how to clear its state.

The adapter supports the snnTorch neurons ``Leaky``, ``Synaptic``, ``Lapicque``, ``Alpha``,
``RLeaky`` and ``RSynaptic`` (and user subclasses of them), in one of two styles:

* **step-wise** (every neuron has ``init_hidden=True``): ``model(x_t)`` computes one time step,
  the neurons keep their state between calls, and the adapter runs the time loop;
* **sequence** (every neuron has ``init_hidden=False``): the model's ``forward`` runs its own
  time loop with explicit states and returns the recorded spikes (and membranes), time first.

Neuron state lives in the neurons' non-persistent buffers (``mem``, ``syn``, ``spk``, ...).
:func:`reset_states` empties them, so the next call starts from rest and no tensor of a
previous batch (or of its autograd graph) survives in the model. snnTorch's own
``utils.reset`` only resets neurons listed in a class-level registry that deep copies never
join, so a copied model would carry its state over; this module resets by walking the model.

Example:
    >>> import snntorch as snn
    >>> from torch import nn
    >>> model = nn.Sequential(nn.Linear(4, 3), snn.Leaky(beta=0.9, init_hidden=True))
    >>> describe_model(model).style
    'step'
    >>> describe_model(nn.Linear(4, 3)) is None
    True
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass

import torch
from torch import nn

from sconce.errors import ModelError

logger = logging.getLogger(__name__)

SUPPORTED_NEURONS: tuple[str, ...] = ("Leaky", "Synaptic", "Lapicque", "Alpha", "RLeaky",
                                      "RSynaptic")
"""snnTorch neuron classes the adapter runs (user subclasses of them too)."""

STEP, SEQUENCE = "step", "sequence"


class UnsupportedSpikingModel(ModelError):
    """The model uses snnTorch features the adapter cannot run; the message names them.

    Example:
        >>> import snntorch as snn
        >>> describe_model(nn.Sequential(snn.SLSTM(4, 4)))
        Traceback (most recent call last):
        ...
        sconce_snn.neurons.UnsupportedSpikingModel: sconce-snn cannot run 0 (SLSTM); \
supported neurons: Leaky, Synaptic, Lapicque, Alpha, RLeaky, RSynaptic
    """


class StatefulLayer(nn.Module):
    """Base class of sconce-snn's own layers that keep state across time steps.

    Subclasses keep their state in non-persistent buffers and implement :meth:`reset_state`;
    the adapter calls it between batches exactly as it clears the neurons' state.

    Example:
        >>> class Counter(StatefulLayer):
        ...     def reset_state(self):
        ...         self.register_buffer("count", torch.zeros(0), persistent=False)
        >>> Counter().reset_state()
    """

    def reset_state(self) -> None:
        """Return to rest: clear every state buffer."""
        raise NotImplementedError


@dataclass(frozen=True)
class SpikingModel:
    """What the adapter needs to know about a spiking model.

    Attributes:
        style: ``"step"`` (one time step per call) or ``"sequence"`` (the model loops).
        neurons: qualified names of its spiking neurons, in module order.

    Example:
        >>> SpikingModel("step", ("lif1",)).neurons
        ('lif1',)
    """

    style: str
    neurons: tuple[str, ...]


def _snntorch_neuron_base() -> type | None:
    module = sys.modules.get("snntorch")
    return None if module is None else module.SpikingNeuron


def is_spiking_neuron(module: nn.Module) -> bool:
    """Whether ``module`` is a snnTorch spiking neuron (of any kind).

    Example:
        >>> is_spiking_neuron(nn.ReLU())
        False
    """
    base = _snntorch_neuron_base()
    return base is not None and isinstance(module, base)


def _snntorch_class(module: nn.Module) -> type | None:
    """The nearest class of ``module`` (itself or a base) defined inside snnTorch."""
    return next((cls for cls in type(module).__mro__
                 if cls.__module__.split(".")[0] == "snntorch"), None)


def spiking_neurons(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(qualified name, neuron)`` for every snnTorch spiking neuron of ``model``.

    Example:
        >>> import snntorch as snn
        >>> [name for name, _ in spiking_neurons(nn.Sequential(snn.Leaky(beta=0.5)))]
        ['0']
    """
    return [(name, module) for name, module in model.named_modules()
            if is_spiking_neuron(module)]


def describe_model(model: nn.Module) -> SpikingModel | None:
    """How to run ``model``, or None when it holds no snnTorch neuron (an ANN).

    Raises:
        UnsupportedSpikingModel: the model holds snnTorch modules the adapter does not run
            (their names and classes are listed), or mixes neurons with and without
            ``init_hidden``.

    Example:
        >>> import snntorch as snn
        >>> describe_model(nn.Sequential(nn.Linear(2, 2), snn.Leaky(beta=0.5)))
        SpikingModel(style='sequence', neurons=('1',))
    """
    if "snntorch" not in sys.modules:
        return None
    neurons: list[tuple[str, nn.Module]] = []
    unsupported: list[str] = []
    for name, module in model.named_modules():
        origin = _snntorch_class(module)
        if origin is None:
            continue
        if origin.__name__ in SUPPORTED_NEURONS:
            neurons.append((name, module))
        elif is_spiking_neuron(module) or origin.__name__.endswith(("Parallel", "LSTM")):
            unsupported.append(f"{name or '<model>'} ({type(module).__name__})")
    if unsupported:
        raise UnsupportedSpikingModel(
            f"sconce-snn cannot run {', '.join(unsupported)}; supported neurons: "
            f"{', '.join(SUPPORTED_NEURONS)}")
    if not neurons:
        return None
    hidden = {name: bool(getattr(module, "init_hidden", False)) for name, module in neurons}
    if len(set(hidden.values())) > 1:
        implicit = [name for name, flag in hidden.items() if flag]
        explicit = [name for name, flag in hidden.items() if not flag]
        raise UnsupportedSpikingModel(
            f"neurons {', '.join(implicit)} have init_hidden=True but {', '.join(explicit)} "
            "do not; sconce-snn runs a model whose neurons all keep their own state "
            "(init_hidden=True, one time step per call) or all take explicit states "
            "(the model loops over time itself)")
    style = STEP if next(iter(hidden.values())) else SEQUENCE
    return SpikingModel(style, tuple(name for name, _ in neurons))


def reset_states(model: nn.Module) -> None:
    """Put every neuron (and sconce-snn's stateful layers) of ``model`` back at rest.

    Each state buffer becomes an empty tensor, which snnTorch neurons re-create as zeros of
    the next input's shape; nothing of an earlier batch, or of its autograd graph, is kept.

    Example:
        >>> import snntorch as snn
        >>> lif = snn.Leaky(beta=0.5, init_hidden=True)
        >>> _ = lif(torch.ones(2, 3))
        >>> reset_states(lif); lif.mem.shape
        torch.Size([0])
    """
    with torch.inference_mode(False):  # a fresh, ordinary tensor even inside inference mode
        for module in model.modules():
            if isinstance(module, StatefulLayer):
                module.reset_state()
            elif is_spiking_neuron(module):
                for name in module._non_persistent_buffers_set:
                    state = module._buffers.get(name)
                    device = state.device if state is not None else None
                    module._buffers[name] = torch.zeros(0, device=device)
