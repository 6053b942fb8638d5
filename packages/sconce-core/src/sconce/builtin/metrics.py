"""Built-in plugin: the standard metrics."""

from __future__ import annotations

from collections.abc import Callable

from sconce.hookspecs import hookimpl
from sconce.metrics.base import Metric
from sconce.metrics.standard import BUILTIN_METRICS


@hookimpl
def sconce_register_metrics(register: Callable[[Metric], None]) -> None:
    """Register accuracy, latency (batch 1 and throughput), MACs, params, sparsity, size."""
    for metric in BUILTIN_METRICS:
        register(metric)
