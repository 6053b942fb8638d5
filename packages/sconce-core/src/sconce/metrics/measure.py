"""Measure a model within a context: every metric asked for, the unavailable ones as notes.

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

from sconce.metrics.base import Metric, MetricNotApplicable, MetricUnavailable

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


def measure_with_context(model: nn.Module, ctx: Context, metrics: Sequence[Metric]) -> Measurement:
    """Measure ``metrics`` on ``model`` within ``ctx``; unavailable ones become notes, and
    ones that do not apply to this kind of model are left out."""
    result = Measurement()
    for metric in metrics:
        label = metric.display_label(ctx) if hasattr(metric, "display_label") else metric.label
        result.labels[metric.name] = label or metric.name
        try:
            result.values[metric.name] = float(metric.measure(model, ctx))
        except MetricNotApplicable:
            continue
        except MetricUnavailable as exc:
            result.values[metric.name] = None
            result.notes[metric.name] = str(exc)
            logger.info("%s not measured: %s", metric.name, exc)
    return result
