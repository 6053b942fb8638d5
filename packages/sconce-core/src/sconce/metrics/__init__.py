"""Metrics: the interface (:mod:`.base`), timing (:mod:`.timing`), the built-in metrics
(:mod:`.standard`) and :func:`sconce.measure` (:mod:`.measure`)."""

from __future__ import annotations

from sconce.metrics.base import Metric, MetricNotApplicable, MetricUnavailable
from sconce.metrics.timing import Timed, TimingSettings, time_call, time_interleaved

__all__ = ["Metric", "MetricNotApplicable", "MetricUnavailable", "Timed", "TimingSettings",
           "time_call", "time_interleaved"]
