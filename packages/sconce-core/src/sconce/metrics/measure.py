"""Measure models within a context: every metric asked for, the unavailable ones as notes.

Metrics that mean something only side by side (latency,
:class:`~sconce.metrics.base.ComparedMetric`) are measured for several models together by
:func:`compare_with_context`, interleaved.

:func:`sconce.measure` (the public function) resolves metric names and the model's adapter
through the plugins and calls :func:`measure_with_context`.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from sconce.context import Context
    >>> from sconce.metrics.standard import MACs, Params, Size
    >>> result = measure_with_context(nn.Linear(100, 10), Context.for_inputs(torch.randn(1, 100)),
    ...                               [Params(), Size(), MACs()])
    >>> result.values["params"], result.values["size"] * 2**20, result.values["macs"]
    (1010.0, 4040.0, 1000.0)
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sconce.metrics.base import ComparedMetric, Metric, MetricNotApplicable, MetricUnavailable

if TYPE_CHECKING:
    from torch import nn

    from sconce.context import Context

logger = logging.getLogger(__name__)


@dataclass
class Measurement:
    """Values by metric name (None where unavailable) and the reason for each gap.

    Example:
        >>> Measurement().values
        {}
    """

    values: dict[str, float | None] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    stability: dict[str, str] = field(default_factory=dict)


def is_compared(metric: Metric) -> bool:
    """Whether ``metric`` is measured side by side (:class:`ComparedMetric`).

    Example:
        >>> from sconce.metrics.standard import Latency, Size
        >>> is_compared(Latency()), is_compared(Size())
        (True, False)
    """
    return isinstance(metric, ComparedMetric)


def _label(metric: Metric, ctx: Context) -> str:
    label = metric.display_label(ctx) if hasattr(metric, "display_label") else metric.label
    return str(label or metric.name)


def measure_with_context(model: nn.Module, ctx: Context, metrics: Sequence[Metric], *,
                         compared: bool = True) -> Measurement:
    """Measure ``metrics`` on ``model`` within ``ctx``; unavailable ones become notes, and
    ones that do not apply to this kind of model are left out.

    With ``compared=False`` the side-by-side metrics are left out (labels only) for
    :func:`compare_with_context` to measure later with the models they are compared with.
    """
    result = Measurement()
    for metric in metrics:
        result.labels[metric.name] = _label(metric, ctx)
        if not compared and is_compared(metric):
            continue
        try:
            result.values[metric.name] = float(metric.measure(model, ctx))
        except MetricNotApplicable:
            continue
        except MetricUnavailable as exc:
            result.values[metric.name] = None
            result.notes[metric.name] = str(exc)
            logger.info("%s not measured: %s", metric.name, exc)
    return result


def compare_with_context(models: Sequence[nn.Module], ctx: Context, metrics: Sequence[Metric]
                         ) -> list[Measurement]:
    """Measure the side-by-side metrics of ``metrics`` for ``models`` together, interleaved;
    each model's :class:`Measurement` says in ``stability`` how stable its ratio to
    ``models[0]`` was.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from sconce.context import Context
        >>> from sconce.metrics.standard import Latency
        >>> from sconce.metrics.timing import TimingSettings
        >>> ctx = Context.for_inputs(torch.randn(1, 64), timing=TimingSettings(
        ...     rounds=2, round_seconds=0.01, warmup_seconds=0.01))
        >>> first, second = compare_with_context([nn.Linear(64, 64), nn.Linear(64, 8)], ctx,
        ...                                      [Latency()])
        >>> sorted(second.values), "round" in second.stability["latency"]
        (['latency'], True)
    """
    results = [Measurement() for _ in models]
    for metric in metrics:
        if not isinstance(metric, ComparedMetric):
            continue
        for result in results:
            result.labels[metric.name] = _label(metric, ctx)
        try:
            timed = metric.measure_together(models, ctx)
        except MetricUnavailable as exc:
            for result in results:
                result.values[metric.name] = None
                result.notes[metric.name] = str(exc)
            continue
        for result, one in zip(results, timed, strict=True):
            result.values[metric.name] = float(one.ms)
            result.stability[metric.name] = one.describe()
        logger.info("%s: %s", metric.name, "; ".join(t.describe() for t in timed[1:]) or
                    f"{timed[0].ms:.4g} over {len(timed[0].rounds)} round(s)")
    return results
