"""The metric interface.

A metric is any object with ``name``, ``label``, ``unit``, ``higher_is_better`` and
``measure(model, ctx)``; :class:`Metric` is a convenience base class. ``measure`` returns a
float, or raises :class:`MetricUnavailable` with a reason when the metric cannot be
measured for this model (the report shows the reason instead of a number), or
:class:`MetricNotApplicable` when it has no meaning for this kind of model (the report omits
it).

Example:
    >>> class CountModules(Metric):
    ...     name, label, unit = "modules", "Modules", ""
    ...     def measure(self, model, ctx):
    ...         return float(len(list(model.modules())))
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, ClassVar, Protocol, runtime_checkable

if TYPE_CHECKING:
    from torch import nn

    from sconce.context import Context
    from sconce.metrics.timing import Timed


@runtime_checkable
class ComparedMetric(Protocol):
    """A metric whose values mean something only side by side (latency): it measures several
    models together (interleaved), the first being the reference for the ratios.

    ``sconce.compress`` measures such metrics for the original and every stage together at
    the end of the run, and :func:`sconce.measure` for the models it is given.
    """

    name: str

    def measure_together(self, models: Sequence[nn.Module], ctx: Context) -> list[Timed]:
        """One :class:`~sconce.metrics.timing.Timed` per model, ratios to ``models[0]``."""


class MetricUnavailable(Exception):
    """Raised by ``measure`` when the metric does not apply to this model or data."""


class MetricNotApplicable(MetricUnavailable):
    """Raised by ``measure`` when the metric means nothing for this kind of model (the spike
    rate of a network without spiking neurons): no value and no note are recorded, and a
    report leaves out a metric that applied to none of its models.

    Example:
        >>> class SpikeRate(Metric):
        ...     name = "spike_rate"
        ...     def measure(self, model, ctx):
        ...         raise MetricNotApplicable("not a spiking network")
    """


class Metric:
    """Convenience base class for metrics.

    Attributes:
        name: registry key and JSON key (``latency``).
        label: row label in the report (``Latency b=1``).
        unit: unit shown next to the label (``ms/sample``).
        higher_is_better: direction, for ratios and constraint checks.
        default: measured when no explicit metric list is given.
        needs_data: needs labelled data (skipped when only example inputs are known).
        digits: decimals shown in tables.
        display_scale: tables show ``value / display_scale`` ...
        display_unit: ... in this unit (``M`` for millions); defaults to ``unit``.
        kept_by_kinds: technique kinds that do not change this metric's value (quantization
            changes the precision of each multiply-accumulate, not their number): when the
            metric cannot measure such a stage's model, the pipeline carries the value from
            the stage before, with a note saying so and why.
        tasks: the adapter tasks (``ModelAdapter.task``) the metric is a default for; None:
            every task.
    """

    name: ClassVar[str] = ""
    label: ClassVar[str] = ""
    unit: ClassVar[str] = ""
    higher_is_better: ClassVar[bool] = False
    default: ClassVar[bool] = True
    needs_data: ClassVar[bool] = False
    digits: ClassVar[int] = 3
    display_scale: ClassVar[float] = 1.0
    display_unit: ClassVar[str | None] = None
    kept_by_kinds: ClassVar[tuple[str, ...]] = ()
    tasks: ClassVar[tuple[str, ...] | None] = None

    def measure(self, model: nn.Module, ctx: Context) -> float:
        """Measure ``model``; raise :class:`MetricUnavailable` when it does not apply."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<metric {self.name} ({self.unit})>"
