"""The built-in metrics: accuracy, latency, MACs, params, non-zero params, sparsity, size.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from sconce.context import Context
    >>> ctx = Context.for_inputs(torch.randn(1, 100))
    >>> Params().measure(nn.Linear(100, 10), ctx)
    1010.0
"""

from __future__ import annotations

import logging
import warnings
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from sconce.metrics.base import Metric, MetricUnavailable
from sconce.metrics.timing import time_call
from sconce.runtime import model_device

if TYPE_CHECKING:
    from sconce.context import Context

logger = logging.getLogger(__name__)

MIB = 2**20


class Accuracy(Metric):
    """Top-1 accuracy on the test split, in percent, from exact counts."""

    name, label, unit = "accuracy", "Accuracy", "%"
    higher_is_better = True
    needs_data = True
    digits = 2

    def measure(self, model: nn.Module, ctx: Context) -> float:
        if ctx.data is None:
            raise MetricUnavailable("no labelled data")
        return ctx.evaluate(model, ctx.measure_split).accuracy


class Latency(Metric):
    """Milliseconds per sample at batch 1 (min over rounds of the round median)."""

    name, label, unit = "latency", "Latency b=1", "ms/sample"
    batch_size: int | None = 1

    def display_label(self, ctx: Context) -> str:
        return f"Latency b={self._batch(ctx)}"

    def _batch(self, ctx: Context) -> int:
        return self.batch_size or ctx.timing.batch_size

    def measure(self, model: nn.Module, ctx: Context) -> float:
        batch = self._batch(ctx)
        device = model_device(model, ctx.device)
        inputs = ctx.adapter.to_device(ctx.example_inputs(batch), device)
        was_training = model.training
        model.eval()
        try:
            ms = time_call(lambda: ctx.adapter.forward(model, inputs), device, ctx.timing)
        finally:
            model.train(was_training)
        return ms / batch


class BatchLatency(Latency):
    """Milliseconds per sample at the throughput batch size (64 unless set)."""

    name, label = "latency_batch", "Latency (throughput batch)"
    batch_size = None


class _AdapterForward(nn.Module):
    """Wraps model + adapter so tracers see the adapter's way of running the model."""

    def __init__(self, model: nn.Module, ctx: Context) -> None:
        super().__init__()
        self.model = model
        self._adapter = ctx.adapter

    def forward(self, *inputs: Any) -> Any:
        return self._adapter.forward(self.model, inputs[0] if len(inputs) == 1 else inputs)


class MACs(Metric):
    """Multiply-accumulates per sample, counted by torchprofile on a traced forward."""

    name, label, unit = "macs", "MACs", "MACs"
    digits = 2
    display_scale, display_unit = 1e6, "M"

    def measure(self, model: nn.Module, ctx: Context) -> float:
        from torchprofile import profile_macs

        device = model_device(model, ctx.device)
        inputs = ctx.adapter.to_device(ctx.example_inputs(1), device)
        args = inputs if isinstance(inputs, tuple) else (inputs,)
        was_training = model.training
        model.eval()
        try:
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")
                logging.getLogger("torchprofile").setLevel(logging.ERROR)
                macs = profile_macs(_AdapterForward(model, ctx), args)
        except Exception as exc:  # any tracer failure becomes a note, never a crash
            raise MetricUnavailable(
                f"torchprofile cannot trace this model ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else ''})"
            ) from None
        finally:
            model.train(was_training)
        if not isinstance(macs, int):  # a per-node table, only with a reduction we never ask
            raise MetricUnavailable("torchprofile returned a table instead of a count")
        if macs == 0 and ctx.footprint(model).params:
            raise MetricUnavailable("torchprofile counts no MACs for this model's operators")
        return float(macs)


class Params(Metric):
    """Weight values stored by the model (parameters, or packed weights)."""

    name, label, unit = "params", "Params", "params"
    digits = 4
    display_scale, display_unit = 1e6, "M"

    def measure(self, model: nn.Module, ctx: Context) -> float:
        return float(ctx.footprint(model).params)


class NonZeroParams(Metric):
    """Weight values that are not zero."""

    name, label, unit = "nonzero_params", "Non-zero params", "params"
    digits = 4
    display_scale, display_unit = 1e6, "M"

    def measure(self, model: nn.Module, ctx: Context) -> float:
        return float(ctx.footprint(model).nonzero)


class Sparsity(Metric):
    """Percentage of weight values that are zero."""

    name, label, unit = "sparsity", "Sparsity", "%"
    higher_is_better = True
    digits = 1

    def measure(self, model: nn.Module, ctx: Context) -> float:
        return 100.0 * ctx.footprint(model).sparsity


class Size(Metric):
    """MiB (2^20 bytes) that would ship: stored dtypes, scales, sparse indices, buffers."""

    name, label, unit = "size", "Size", "MiB"

    def measure(self, model: nn.Module, ctx: Context) -> float:
        return ctx.footprint(model).nbytes / MIB


BUILTIN_METRICS: tuple[Metric, ...] = (
    Accuracy(), Latency(), BatchLatency(), MACs(), Params(), NonZeroParams(), Sparsity(), Size(),
)
