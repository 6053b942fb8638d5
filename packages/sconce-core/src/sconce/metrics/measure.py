"""Measure a model: every default metric (or the ones asked for) in one call.

Example:
    >>> import torch
    >>> from torch import nn
    >>> values = measure(nn.Linear(100, 10), example_inputs=torch.randn(1, 100),
    ...                  metrics=["params", "size", "macs"])
    >>> values["params"], values["size"] * 2**20, values["macs"]
    (1010.0, 4040.0, 1000.0)
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from sconce.adapter import ModelAdapter, get_adapter
from sconce.context import Context
from sconce.data import Data
from sconce.errors import DataError
from sconce.metrics.base import Metric, MetricNotApplicable, MetricUnavailable
from sconce.metrics.timing import TimingSettings
from sconce.runtime import resolve_device

logger = logging.getLogger(__name__)


@dataclass
class Measurement:
    """Values by metric name (None where unavailable) and the reason for each gap."""

    values: dict[str, float | None] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)


def resolve_metrics(names: Sequence[str | Metric] | None, *, have_data: bool) -> list[Metric]:
    """Metric objects for ``names`` (registered names or objects); None means the defaults.

    Example:
        >>> [m.name for m in resolve_metrics(["params"], have_data=False)]
        ['params']
    """
    from sconce.plugins import registry

    table = registry().metrics
    if names is None:
        chosen = [m for m in table.values() if getattr(m, "default", True)]
        return [m for m in chosen if have_data or not getattr(m, "needs_data", False)]
    return [n if not isinstance(n, str) else registry().lookup("metrics", n) for n in names]


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


def measure(
    model: nn.Module,
    data: Data | Mapping[str, Any] | str | None = None,
    example_inputs: Any = None,
    metrics: Sequence[str | Metric] | None = None,
    *,
    device: str | torch.device = "cpu",
    adapter: ModelAdapter | None = None,
    timing: TimingSettings | None = None,
) -> dict[str, float | None]:
    """Measure ``model`` and return ``{metric name: value}`` (None where not measurable;
    metrics that do not apply to this kind of model are left out).

    Args:
        model: measured as is (in eval mode; its mode is restored).
        data: labelled data for accuracy; without it only model-only metrics run.
        example_inputs: one input batch, when there is no data.
        metrics: names or Metric objects; default: every default metric that applies.
        device: where to run ("cpu" by default, so numbers are comparable).
        adapter: how to run the model.
        timing: latency settings (threads, rounds, throughput batch).
    """
    resolved_data = Data.from_value(data) if data is not None else None
    if resolved_data is None and example_inputs is None:
        raise DataError("measure() needs data= or example_inputs=")
    ctx = Context(
        data=resolved_data, adapter=get_adapter(model, adapter), device=resolve_device(device),
        inputs=example_inputs, timing=timing or TimingSettings(), progress=False,
    )
    chosen = resolve_metrics(metrics, have_data=resolved_data is not None)
    return measure_with_context(model, ctx, chosen).values
