"""Metrics: the interface (:mod:`.base`), timing (:mod:`.timing`), the built-in metrics
(:mod:`.standard`) and :func:`sconce.measure` (:mod:`.measure`)."""

from __future__ import annotations

from sconce.metrics.base import Metric, MetricUnavailable
from sconce.metrics.timing import Timed, TimingSettings, time_call, time_interleaved

__all__ = ["Metric", "MetricUnavailable", "Timed", "TimingSettings", "time_call",
           "time_interleaved"]
