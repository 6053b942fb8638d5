"""The model adapter for snnTorch networks: time steps, encoding, state, readout, loss.

:class:`SpikingAdapter` is what the core's training loop, evaluation and metrics use to run a
spiking network, so every technique and metric works on it unchanged:

* ``forward`` clears every neuron's state, encodes the batch over ``num_steps`` (``direct``,
  ``rate`` or ``latency``), runs the time loop (or lets a model with explicit states run its
  own), clears the state again, and returns a :class:`SpikeRecord` (time-first spikes and,
  when the model returns them, membrane potentials);
* ``logits`` / ``predict`` read classes from spike counts (``readout="spikes"``) or from the
  maximum membrane potential over time (``readout="membrane"``);
* ``loss`` is snnTorch's: ``ce_rate_loss`` for spike readout, ``ce_max_membrane_loss`` for
  membrane readout, or the one named by ``loss_function``.

A model may carry its own adapter options as ``model.sconce_snn = {"num_steps": 50, ...}``
(``snn.convert`` sets them on the networks it builds); the plugin's adapter reads them.

Example:
    >>> import snntorch as snn
    >>> from torch import nn
    >>> model = nn.Sequential(nn.Linear(4, 3), snn.Leaky(beta=0.9, init_hidden=True, output=True))
    >>> adapter = SpikingAdapter(num_steps=10)
    >>> record = adapter.forward(model, torch.ones(2, 4))
    >>> record.spikes.shape, adapter.predict(record).shape
    (torch.Size([10, 2, 3]), torch.Size([2]))
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from sconce.adapter import ModelAdapter
from sconce.config import check_choice
from sconce.errors import ConfigError, DataError, ModelError
from sconce_snn.encoding import ENCODINGS, encode
from sconce_snn.neurons import STEP, describe_model, reset_states

logger = logging.getLogger(__name__)

READOUTS: tuple[str, ...] = ("spikes", "membrane")
LOSSES: dict[str, str] = {
    "ce_rate": "ce_rate_loss", "ce_count": "ce_count_loss",
    "ce_max_membrane": "ce_max_membrane_loss", "mse_count": "mse_count_loss",
}
"""Loss names and the ``snntorch.functional`` losses they stand for."""
MODEL_OPTIONS_ATTRIBUTE = "sconce_snn"


class SpikeRecord(NamedTuple):
    """What a spiking model produced over time.

    Attributes:
        spikes: output spikes, time first: ``(steps, batch, outputs)``.
        membrane: output membrane potentials of the same shape, or None when the model
            returns spikes only.

    Example:
        >>> SpikeRecord(torch.zeros(5, 2, 3), None).spikes.shape
        torch.Size([5, 2, 3])
    """

    spikes: torch.Tensor
    membrane: torch.Tensor | None


@dataclass
class SpikingAdapter(ModelAdapter):
    """Runs snnTorch networks for the core (see the module docstring).

    Attributes:
        num_steps: time steps per sample (models that loop themselves decide their own).
        encoding: ``direct``, ``rate`` or ``latency``.
        readout: ``spikes`` (count) or ``membrane`` (maximum over time).
        loss_function: ``auto`` (``ce_rate`` for spike readout, ``ce_max_membrane`` for
            membrane) or one of ``ce_rate``, ``ce_count``, ``ce_max_membrane``, ``mse_count``.
        input_range: raw input range mapped onto [0, 1] for rate / latency codes (None: each
            sample's own min / max when inputs leave [0, 1]).
        seed: rate spikes in evaluation are drawn from this seed, so measurements repeat.
        recipe_groups: the default recipe of spiking networks: pruning (unstructured first),
            then int8 weights that keep the neurons running step by step.

    Example:
        >>> SpikingAdapter(num_steps=0)
        Traceback (most recent call last):
        ...
        sconce.errors.ConfigError: num_steps must be a positive integer, got 0
    """

    recipe_groups: ClassVar[tuple[tuple[str, ...], ...] | None] = (
        ("prune.gmp", "prune.magnitude", "prune.channel"), ("snn.int8_weights",))

    num_steps: int = 25
    encoding: str = "direct"
    readout: str = "spikes"
    loss_function: str = "auto"
    input_range: tuple[float, float] | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.num_steps, bool) or not isinstance(self.num_steps, int) \
                or self.num_steps < 1:
            raise ConfigError(f"num_steps must be a positive integer, got {self.num_steps!r}")
        check_choice("encoding", self.encoding, ENCODINGS)
        check_choice("readout", self.readout, READOUTS)
        check_choice("loss_function", self.loss_function, ("auto", *LOSSES))
        if self.input_range is not None:
            low, high = (float(v) for v in self.input_range)
            if not high > low:
                raise ConfigError(f"input_range must be (low, high) with high > low, "
                                  f"got {self.input_range!r}")
            self.input_range = (low, high)

    @classmethod
    def for_model(cls, model: nn.Module, **options: Any) -> SpikingAdapter:
        """The adapter for ``model``: its ``sconce_snn`` options, then ``options``, over
        the defaults.

        Example:
            >>> net = nn.Linear(2, 2)
            >>> net.sconce_snn = {"num_steps": 7}
            >>> SpikingAdapter.for_model(net).num_steps
            7
        """
        carried = getattr(model, MODEL_OPTIONS_ATTRIBUTE, None) or {}
        if not isinstance(carried, Mapping):
            raise ConfigError(f"model.{MODEL_OPTIONS_ATTRIBUTE} must be a dict of adapter "
                              f"options, got {type(carried).__name__}")
        return cls.with_defaults(**{**carried, **options})

    @classmethod
    def with_defaults(cls, **options: Any) -> SpikingAdapter:
        """An adapter from keyword options; an unknown one is a one-line ConfigError.

        Example:
            >>> SpikingAdapter.with_defaults(steps=3)
            Traceback (most recent call last):
            ...
            sconce.errors.ConfigError: unknown spiking adapter option 'steps'; known: \
num_steps, encoding, readout, loss_function, input_range, seed
        """
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = [key for key in options if key not in known]
        if unknown:
            raise ConfigError(f"unknown spiking adapter option {unknown[0]!r}; "
                              f"known: {', '.join(known)}")
        if isinstance(options.get("input_range"), list):
            options["input_range"] = tuple(options["input_range"])
        return cls(**options)

    # --- running ------------------------------------------------------------------------------
    def reset(self, model: nn.Module) -> None:
        """Put every neuron back at rest (see :func:`sconce_snn.neurons.reset_states`)."""
        reset_states(model)

    def forward(self, model: nn.Module, inputs: Any) -> Any:
        """Run ``model`` over time on one batch and return a :class:`SpikeRecord`.

        A model without spiking neurons is run once, as a classifier.
        """
        described = describe_model(_unwrap(model))
        if described is None:
            return super().forward(model, inputs)
        if not isinstance(inputs, torch.Tensor):
            raise DataError("a spiking network takes one input tensor per batch; got "
                            f"{type(inputs).__name__}")
        self.reset(model)
        try:
            if described.style == STEP:
                return self._run_steps(model, inputs)
            return self._run_sequence(model, inputs)
        finally:
            self.reset(model)

    def _run_steps(self, model: nn.Module, inputs: torch.Tensor) -> SpikeRecord:
        seed = None if model.training else self.seed
        steps = encode(inputs, self.encoding, self.num_steps, input_range=self.input_range,
                       generator_seed=seed)
        spikes: list[torch.Tensor] = []
        membranes: list[torch.Tensor] = []
        for step in range(self.num_steps):
            spike, membrane = _split_output(model(steps[step]))
            spikes.append(spike)
            if membrane is not None:
                membranes.append(membrane)
        return SpikeRecord(torch.stack(spikes), torch.stack(membranes) if membranes else None)

    def _run_sequence(self, model: nn.Module, inputs: torch.Tensor) -> SpikeRecord:
        if self.encoding != "direct":
            raise ConfigError(
                f"encoding={self.encoding!r} needs a model that computes one time step per call "
                "(neurons with init_hidden=True); this model runs its own time loop with "
                "explicit states, so it receives the input as is (encoding='direct')")
        spike, membrane = _split_output(model(inputs))
        if spike.dim() < 3:
            raise ModelError(
                "a model that runs its own time loop must return its recorded output spikes "
                f"time first (steps, batch, classes); it returned shape {tuple(spike.shape)}")
        return SpikeRecord(spike, membrane)

    # --- reading the outputs ------------------------------------------------------------------
    def logits(self, outputs: Any) -> torch.Tensor:
        """Class scores: spike counts, or the maximum membrane potential over time."""
        if not isinstance(outputs, SpikeRecord):
            return super().logits(outputs)
        if self.readout == "spikes":
            return outputs.spikes.sum(dim=0)
        return _membrane(outputs).max(dim=0).values

    def loss(self, outputs: Any, targets: torch.Tensor) -> torch.Tensor:
        """snnTorch's loss for the readout (or the one named by ``loss_function``)."""
        if not isinstance(outputs, SpikeRecord):
            return super().loss(outputs, targets)
        name = self.loss_function if self.loss_function != "auto" else (
            "ce_rate" if self.readout == "spikes" else "ce_max_membrane")
        return self.criterion_loss(_snntorch_loss(name), outputs, targets)

    def criterion_loss(self, criterion: Any, outputs: Any, targets: torch.Tensor
                       ) -> torch.Tensor:
        """A user's criterion: snnTorch losses get the time-first record (membranes for the
        membrane losses), any other loss the class scores."""
        if not isinstance(outputs, SpikeRecord):
            return super().criterion_loss(criterion, outputs, targets)
        if type(criterion).__module__.startswith("snntorch.functional"):
            wants_membrane = "membrane" in type(criterion).__name__
            record = _membrane(outputs) if wants_membrane else outputs.spikes
            return criterion(record, targets).reshape(())
        return criterion(self.logits(outputs), targets)

    def distillation_loss(self, outputs: Any, teacher_outputs: Any,
                          temperature: float = 4.0) -> torch.Tensor:
        """KL divergence between the softened class scores of student and teacher."""
        student = F.log_softmax(self.logits(outputs) / temperature, dim=-1)
        teacher = F.softmax(self.logits(teacher_outputs).detach() / temperature, dim=-1)
        return F.kl_div(student, teacher, reduction="batchmean") * temperature**2


def _unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel wrapper."""
    inner = getattr(model, "module", None)
    return inner if isinstance(inner, nn.Module) and type(model).__name__.endswith(
        "DataParallel") else model


def _split_output(output: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Spikes and membrane from what a model returned: a tensor, or snnTorch's tuples
    (spk, mem), (spk, syn, mem), (spk, syn_exc, syn_inh, mem)."""
    if isinstance(output, torch.Tensor):
        return output, None
    if isinstance(output, (tuple, list)) and output and all(
            isinstance(t, torch.Tensor) for t in output):
        return output[0], (output[-1] if len(output) > 1 else None)
    raise ModelError(f"a spiking network must return spikes, or (spikes, ..., membrane); "
                     f"this one returned {type(output).__name__}")


def _membrane(outputs: SpikeRecord) -> torch.Tensor:
    if outputs.membrane is None:
        raise ModelError("readout='membrane' needs the membrane potentials: make the output "
                         "neuron return them (snnTorch: output=True) or use readout='spikes'")
    return outputs.membrane


def _snntorch_loss(name: str) -> Any:
    import snntorch.functional as SF

    return getattr(SF, LOSSES[name])()
