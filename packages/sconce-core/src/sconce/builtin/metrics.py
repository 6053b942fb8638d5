"""Built-in plugin: the standard metrics, and the quality metrics of language models."""

from __future__ import annotations

from collections.abc import Callable

from sconce.hookspecs import hookimpl
from sconce.metrics.base import Metric
from sconce.metrics.standard import BUILTIN_METRICS
from sconce.metrics.text import EmbeddingCosine, Perplexity


@hookimpl
def sconce_register_metrics(register: Callable[[Metric], None]) -> None:
    """Register accuracy, latency (batch 1 and throughput), MACs, params, sparsity, size,
    and perplexity / embedding cosine (measured by default for the models they fit)."""
    for metric in (*BUILTIN_METRICS, Perplexity(), EmbeddingCosine()):
        register(metric)
