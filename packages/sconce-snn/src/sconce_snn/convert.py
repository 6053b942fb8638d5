"""``snn.convert``: a trained ReLU network becomes a rate-coded spiking network.

Every ``nn.ReLU`` becomes an integrate-and-fire neuron (:class:`IFNeuron`: a snnTorch
``Leaky`` with ``beta = 1``, reset by subtraction) and every ``nn.MaxPool2d`` a
:class:`SpikingMaxPool2d`; every other layer keeps its weights. The network then runs for
``num_steps`` time steps on the input as is (direct encoding), and the classes are read from
the output layer's accumulated values.

**Threshold balancing** (Diehl et al. 2015; Rueckauer et al. 2017): each neuron's threshold
is the ``percentile``-th percentile of its ReLU's activations on calibration data, so a
neuron fires at a rate of ``activation / threshold`` (saturating above). Each spike carries
the threshold as its height (snnTorch's graded spikes), so the next layer receives, on
average, the ANN's activation: no weight is rescaled, and batch norms and biases stay as
they are. Membranes start at ``initial_membrane`` times the threshold (half by default),
which centres the rounding error of the rate code (Bu et al., ICLR 2022).

**Max-pooling** of spikes would pass any spike in a window (overestimating the rate); the
spiking max-pool passes, at every step, the spikes of the input that has accumulated the
most so far (Rueckauer et al. 2017), which converges to the most active input.

The report gets a plot of validation accuracy against time steps (with the ANN's accuracy
on the same samples) and the accuracy at each plotted step count in the notes.

Example:
    >>> from torch import nn
    >>> ann = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    >>> snn_model = convert_modules(ann, {"1": 2.0}, pools=[], initial_membrane=0.5)
    >>> type(snn_model[1]).__name__, float(snn_model[1].threshold)
    ('IFNeuron', 2.0)
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import snntorch as snn
import torch
import torch.nn.functional as F
from snntorch import surrogate
from torch import nn

from sconce.config import Config, check_positive, check_range
from sconce.context import Context
from sconce.errors import ConfigError, ModelError
from sconce.technique import Technique
from sconce_snn.adapter import MODEL_OPTIONS_ATTRIBUTE, SpikingAdapter
from sconce_snn.neurons import StatefulLayer, describe_model
from sconce_snn.steps import accuracy_by_steps, plot_accuracy_by_steps

logger = logging.getLogger(__name__)


class IFNeuron(snn.Leaky):  # type: ignore[misc]  # snntorch ships no type information
    """Integrate-and-fire (``beta = 1``, reset by subtraction), membrane starting at
    ``initial_membrane * threshold``, spikes as high as the threshold.

    Example:
        >>> neuron = IFNeuron(threshold=2.0, initial_membrane=0.5)
        >>> [float(neuron(torch.tensor([1.0]))) for _ in range(3)]  # 2.0, 3.0, 2.0 (after reset)
        [0.0, 2.0, 0.0]
    """

    mem: torch.Tensor
    threshold: torch.Tensor

    def __init__(self, threshold: float | torch.Tensor = 1.0, initial_membrane: float = 0.5
                 ) -> None:
        threshold = torch.as_tensor(threshold, dtype=torch.float32)
        super().__init__(beta=1.0, threshold=threshold, graded_spikes_factor=threshold.clone(),
                         reset_mechanism="subtract", init_hidden=True,
                         spike_grad=surrogate.fast_sigmoid(slope=25))
        self.initial_membrane = float(initial_membrane)

    def forward(self, input_: torch.Tensor, mem: torch.Tensor | None = None) -> Any:
        if mem is None and self.mem.shape != input_.shape:
            self.mem = torch.full_like(input_, 0.0) + self.initial_membrane * self.threshold
        return super().forward(input_, mem)


class SpikingMaxPool2d(StatefulLayer):
    """Max-pooling of spikes: each window passes the spikes of the input that has received
    the most so far (its running sum), rather than any spike of the window.

    Example:
        >>> pool = SpikingMaxPool2d(2)
        >>> _ = pool(torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]]))  # input 0 leads
        >>> pool(torch.tensor([[[[0.0, 1.0], [0.0, 0.0]]]])).flatten().tolist()
        [0.0]
    """

    accumulated: torch.Tensor

    def __init__(self, kernel_size: Any, stride: Any = None, padding: Any = 0,
                 dilation: Any = 1, ceil_mode: bool = False) -> None:
        super().__init__()
        self.kernel_size, self.stride = kernel_size, stride if stride is not None else kernel_size
        self.padding, self.dilation, self.ceil_mode = padding, dilation, ceil_mode
        self.register_buffer("accumulated", torch.zeros(0), persistent=False)

    @classmethod
    def like(cls, pool: nn.MaxPool2d) -> SpikingMaxPool2d:
        """The spiking version of ``pool`` (same window, stride, padding, dilation)."""
        if pool.return_indices:
            raise ModelError("snn.convert cannot convert a MaxPool2d that returns indices")
        return cls(pool.kernel_size, pool.stride, pool.padding, pool.dilation, pool.ceil_mode)

    def reset_state(self) -> None:
        self._buffers["accumulated"] = torch.zeros(0, device=self.accumulated.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seen = x.detach()
        if self.accumulated.shape == x.shape:
            seen = self.accumulated + seen
        self.accumulated = seen
        _, index = F.max_pool2d(seen, self.kernel_size, self.stride, self.padding,
                                self.dilation, self.ceil_mode, return_indices=True)
        picked = x.flatten(2).gather(2, index.flatten(2))
        return picked.reshape(index.shape)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


@dataclass
class ConvertConfig(Config):
    """Settings of ``snn.convert``.

    Attributes:
        num_steps: time steps the converted network runs for.
        percentile: each threshold is this percentile of its layer's ReLU activations on
            the calibration data (100: the maximum, as in Diehl et al. 2015).
        calibration_samples: calibration inputs for the thresholds.
        initial_membrane: membranes start at this fraction of the threshold.
        curve_steps: step counts on the accuracy-vs-time-steps plot (empty: no plot).
        curve_samples: validation samples the plot is measured on.

    Example:
        >>> ConvertConfig(num_steps=50).percentile
        99.99
    """

    num_steps: int = 100
    percentile: float = 99.99
    calibration_samples: int = 512
    initial_membrane: float = 0.5
    curve_steps: tuple[int, ...] = (5, 10, 25, 50, 100)
    curve_samples: int = 512

    def validate(self) -> None:
        super().validate()
        for name in ("num_steps", "calibration_samples"):
            _check_positive_ints(name, [getattr(self, name)])
        _check_positive_ints("curve_steps", list(self.curve_steps))
        check_range("percentile", self.percentile, 0.0, 100.0, low_inclusive=False)
        check_range("initial_membrane", self.initial_membrane, 0.0, 1.0)
        check_positive("curve_samples", self.curve_samples, allow_zero=True)


def _check_positive_ints(name: str, values: list[Any]) -> None:
    if any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values):
        shown = values[0] if name != "curve_steps" else values
        raise ConfigError(f"{name} must be a positive integer (or integers), got {shown!r}")


def _unsupported(model: nn.Module) -> list[str]:
    """Layers with no rate-coded equivalent, and ReLUs called as functions."""
    problems = []
    for name, module in model.named_modules():
        activation = type(module).__module__ == "torch.nn.modules.activation"
        other_max = isinstance(module, (nn.MaxPool1d, nn.MaxPool3d, nn.AdaptiveMaxPool1d,
                                        nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d))
        if (activation and type(module) is not nn.ReLU) or other_max:
            problems.append(f"{name} ({type(module).__name__})")
    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception:  # untraceable models: module ReLUs only, said in the log
        logger.info("snn.convert: the model cannot be traced; only nn.ReLU modules are "
                    "converted (a relu called as a function would stay a ReLU)")
        return problems
    for node in graph.nodes:
        if (node.op == "call_function" and node.target in (F.relu, torch.relu, torch.relu_)) \
                or (node.op == "call_method" and node.target in ("relu", "relu_")):
            problems.append(f"{node.name} (relu called as a function; use nn.ReLU)")
    return problems


HISTOGRAM_BINS = 1 << 16
"""Bins of the activation histograms the thresholds are read from."""


def calibrate_thresholds(model: nn.Module, batches: Iterable[Any], percentile: float
                         ) -> dict[str, float]:
    """The ``percentile``-th percentile of each ``nn.ReLU`` module's outputs over
    ``batches`` (input tensors), by ReLU name.

    Two passes over the batches: the largest activation of each layer, then a histogram of
    :data:`HISTOGRAM_BINS` bins up to it; the threshold is the upper edge of the bin holding
    the value of that rank (at most ``max / 65536`` above the exact percentile), so memory
    stays flat however many activations there are.

    Raises:
        ModelError: a ReLU module is called at several places, or never.

    Example:
        >>> model = nn.Sequential(nn.Identity(), nn.ReLU())
        >>> calibrate_thresholds(model, [torch.arange(10.0).reshape(2, 5)], 100.0)
        {'1': 9.0}
    """
    relus: dict[str, nn.Module] = {name: module for name, module in model.named_modules()
                                   if type(module) is nn.ReLU}
    inputs = list(batches)
    peaks = dict.fromkeys(relus, 0.0)
    histograms = {name: torch.zeros(HISTOGRAM_BINS, dtype=torch.float64) for name in relus}

    def peak(name: str, values: torch.Tensor) -> None:
        peaks[name] = max(peaks[name], float(values.max()))

    def count(name: str, values: torch.Tensor) -> None:
        top = peaks[name]
        if top > 0:
            histograms[name] += torch.histc(values, HISTOGRAM_BINS, 0.0, top).double().cpu()

    _run_with_relu_hooks(model, relus, inputs, peak)
    _run_with_relu_hooks(model, relus, inputs, count)
    thresholds = {}
    for name in relus:
        total = float(histograms[name].sum())
        if total == 0:
            thresholds[name] = 1.0  # a layer that never activates
            continue
        rank = max(1.0, math.ceil(round(total * (100.0 - percentile) / 100.0, 6)))
        from_top = histograms[name].flip(0).cumsum(0)
        bins_down = int(torch.searchsorted(from_top, torch.tensor(rank, dtype=torch.float64)))
        edge = (HISTOGRAM_BINS - bins_down) / HISTOGRAM_BINS * peaks[name]
        thresholds[name] = edge if edge > 0 else 1.0
    return thresholds


def _run_with_relu_hooks(model: nn.Module, relus: dict[str, nn.Module], batches: list[Any],
                         visit: Any) -> None:
    """Run ``model`` on ``batches`` calling ``visit(name, flat activations)`` per ReLU."""
    calls = dict.fromkeys(relus, 0)

    def hook_for(name: str) -> Any:
        def hook(_: nn.Module, __: Any, output: torch.Tensor) -> None:
            calls[name] += 1
            visit(name, output.detach().flatten().float())
        return hook

    handles = [module.register_forward_hook(hook_for(name)) for name, module in relus.items()]
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for index, inputs in enumerate(batches, start=1):
                model(inputs)
                shared = [name for name, count in calls.items() if count > index]
                if shared:
                    raise ModelError(
                        f"the ReLU module {shared[0]} is used at several places of the "
                        "network; give each use its own nn.ReLU so each becomes its own "
                        "neuron")
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    missing = [name for name, count in calls.items() if count == 0]
    if missing:
        raise ModelError(f"ReLU {missing[0]} was never called on the calibration data")


def convert_modules(model: nn.Module, thresholds: dict[str, float], pools: Sequence[str],
                    initial_membrane: float) -> nn.Module:
    """Swap the named ReLUs for :class:`IFNeuron` s and the named max-pools for
    :class:`SpikingMaxPool2d` s, in place; return ``model``.

    Example:
        >>> net = convert_modules(nn.Sequential(nn.ReLU(), nn.MaxPool2d(2)), {"0": 1.5},
        ...                       pools=["1"], initial_membrane=0.5)
        >>> [type(m).__name__ for m in net]
        ['IFNeuron', 'SpikingMaxPool2d']
    """
    for name, threshold in thresholds.items():
        model.set_submodule(name, IFNeuron(threshold, initial_membrane))
    for name in pools:
        pool = model.get_submodule(name)
        if not isinstance(pool, nn.MaxPool2d):
            raise ModelError(f"{name} is a {type(pool).__name__}, not a MaxPool2d")
        model.set_submodule(name, SpikingMaxPool2d.like(pool))
    return model


class Conversion(Technique):
    """Convert a ReLU network into a rate-coded spiking network with balanced thresholds.

    Example:
        >>> Conversion().kind, Conversion().Config().num_steps
        ('convert', 100)
    """

    name = "snn.convert"
    kind = "convert"
    Config = ConvertConfig

    def apply(self, model: nn.Module, config: ConvertConfig, ctx: Context) -> nn.Module:
        if describe_model(model) is not None:
            raise ModelError("snn.convert converts ReLU networks; this model already spikes")
        problems = _unsupported(model)
        if problems:
            raise ModelError(f"snn.convert cannot convert {', '.join(problems)}; it turns "
                             "nn.ReLU into spiking neurons and nn.MaxPool2d into spiking "
                             "max-pooling")
        reference = (ctx.evaluate(model, max_samples=config.curve_samples).accuracy
                     if config.curve_steps and config.curve_samples else None)
        thresholds = calibrate_thresholds(model, ctx.calibration_inputs(
            config.calibration_samples), config.percentile)
        if not thresholds:
            raise ModelError("snn.convert found no nn.ReLU module to turn into a neuron")
        pools = [name for name, module in model.named_modules()
                 if isinstance(module, nn.MaxPool2d)]
        convert_modules(model, thresholds, pools, config.initial_membrane)
        setattr(model, MODEL_OPTIONS_ATTRIBUTE, {"num_steps": config.num_steps})
        ctx.note("neurons", f"{len(thresholds)} ReLUs -> integrate-and-fire, {len(pools)} "
                 f"spiking max-pools, {config.num_steps} steps")
        ctx.note("thresholds", {name: round(value, 4) for name, value in thresholds.items()})
        if reference is not None:
            self._curve(model, config, ctx, reference)
        ctx.set_restore_record({"thresholds": thresholds, "pools": pools})
        return model

    def _curve(self, model: nn.Module, config: ConvertConfig, ctx: Context,
               reference: float) -> None:
        adapter = SpikingAdapter.for_model(model)
        data = ctx.require_data()
        curve = accuracy_by_steps(model, data.batches("val", config.curve_samples), adapter,
                                  config.curve_steps, max_samples=config.curve_samples)
        ctx.note("accuracy by time steps (val)",
                 {**{f"{t} steps": round(acc, 2) for t, acc in curve.items()},
                  "ANN": round(reference, 2)})
        plot_accuracy_by_steps(curve, ctx.artifact_path("snn-convert-accuracy-vs-steps.png"),
                               reference=reference,
                               title=f"snn.convert: validation accuracy "
                                     f"({config.curve_samples} samples)")

    def restore(self, model: nn.Module, config: ConvertConfig, record: dict[str, Any]
                ) -> nn.Module:
        """Rebuild the spiking structure on a fresh model of the original ANN."""
        thresholds = {name: float(value) for name, value in record["thresholds"].items()}
        convert_modules(model, thresholds, list(record["pools"]), config.initial_membrane)
        setattr(model, MODEL_OPTIONS_ATTRIBUTE, {"num_steps": config.num_steps})
        return model
