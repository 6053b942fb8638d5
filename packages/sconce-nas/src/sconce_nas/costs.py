"""What a subnet costs to deploy (MACs, params, size, predicted latency) and the limits on it.

Costs are those of the deployed member (BatchNorms folded) and come from the core's own
metrics (MACs from torchprofile, params and size from the footprint) so that they agree with
the report; latency is the lookup table's prediction. :class:`Limits` holds the absolute
limits a search must meet, resolved from targets such as ``"2x"`` against a reference model.

Example:
    >>> limits = Limits(macs=5e6)
    >>> limits.violations(Costs(macs=6e6, params=1e4, size_mib=0.04, latency_ms=0.2))
    {'macs': 1000000.0}
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from sconce.context import Context
from sconce.errors import SconceError
from sconce.metrics.standard import MACs, Params, Size
from sconce.metrics.timing import TimingSettings, time_call
from sconce.recipe import Target
from sconce_nas.latency import LatencyTable
from sconce_nas.space import Choice, SearchSpace

logger = logging.getLogger(__name__)

COSTS: tuple[str, ...] = ("latency_ms", "macs", "params", "size_mib")
UNITS = {"latency_ms": "ms", "macs": "MACs", "params": "params", "size_mib": "MiB"}
LatencyTimer = Callable[[nn.Module, torch.Tensor], float]
"""Batch-1 milliseconds of a model on an example input."""


class InfeasibleConstraint(SconceError):
    """No member of the search space meets a constraint."""


@dataclass(frozen=True)
class Costs:
    """Deployment costs of one subnet (batch-1 latency is the lookup table's prediction).

    Example:
        >>> Costs(macs=1e6, params=1e3, size_mib=0.01, latency_ms=0.1).get("macs")
        1000000.0
    """

    macs: float
    params: float
    size_mib: float
    latency_ms: float

    def get(self, name: str) -> float:
        """The cost called ``name`` (one of :data:`COSTS`)."""
        return float(getattr(self, name))

    def to_dict(self) -> dict[str, float]:
        """Plain values."""
        return asdict(self)


@dataclass(frozen=True)
class Limits:
    """Absolute upper limits; ``None`` leaves a cost free.

    Example:
        >>> Limits(latency_ms=0.5).active()
        {'latency_ms': 0.5}
    """

    latency_ms: float | None = None
    macs: float | None = None
    params: float | None = None
    size_mib: float | None = None

    def active(self) -> dict[str, float]:
        """The limits that are set."""
        return {name: float(getattr(self, name)) for name in COSTS
                if getattr(self, name) is not None}

    def violations(self, costs: Costs) -> dict[str, float]:
        """By how much each broken limit is exceeded (empty when all hold)."""
        return {name: costs.get(name) - limit for name, limit in self.active().items()
                if costs.get(name) > limit}

    def check_feasible(self, smallest: Costs) -> None:
        """Raise :class:`InfeasibleConstraint` when even the smallest subnet breaks a limit.

        Example:
            >>> Limits(macs=1e5).check_feasible(Costs(2e5, 1e3, 0.01, 0.1))
            ... # doctest: +IGNORE_EXCEPTION_DETAIL, +ELLIPSIS
            Traceback (most recent call last):
            sconce_nas.costs.InfeasibleConstraint: target MACs 1e+05 is below the smallest ...
        """
        for name in self.violations(smallest):
            raise InfeasibleConstraint(
                f"target {_label(name)} {self.active()[name]:.4g} is below the smallest subnet "
                f"of the search space ({smallest.get(name):.4g} {UNITS[name]}); relax the "
                "target or search a smaller space")

    def to_dict(self) -> dict[str, float]:
        """Plain values of the set limits."""
        return self.active()


def _label(name: str) -> str:
    return {"latency_ms": "latency (ms)", "macs": "MACs", "params": "params",
            "size_mib": "size (MiB)"}[name]


def measure_reference(model: nn.Module, example: torch.Tensor, names: set[str],
                      timing: TimingSettings, latency: LatencyTimer | None = None
                      ) -> dict[str, float]:
    """The costs ``names`` of a reference model as it is (latency timed at batch 1 by
    ``latency``, by default the core's timing with ``timing``).

    Example:
        >>> measure_reference(nn.Linear(4, 2), torch.randn(1, 4), {"params"}, TimingSettings())
        {'params': 10.0}
    """
    ctx = Context.for_inputs(example, timing=timing)
    out: dict[str, float] = {}
    if "latency_ms" in names:
        model.eval()
        out["latency_ms"] = (latency(model, example) if latency is not None else
                             time_call(lambda: model(example), torch.device("cpu"), timing))
    if "macs" in names:
        out["macs"] = MACs().measure(model, ctx)
    if "params" in names:
        out["params"] = Params().measure(model, ctx)
    if "size_mib" in names:
        out["size_mib"] = Size().measure(model, ctx)
    return out


def resolve_limits(targets: Mapping[str, Any], reference: nn.Module | None,
                   example: torch.Tensor, timing: TimingSettings,
                   latency: LatencyTimer | None = None) -> Limits:
    """Absolute limits from targets (numbers, ``"3ms"``, ``"5M"`` or ratios like ``"2x"``).

    Ratios are taken against ``reference`` (measured here), which they then require. A
    search passes its latency table's timer as ``latency``, so the limit and the table's
    predictions are the same statistic (:meth:`sconce_nas.latency.LatencyTable.measure`).

    Example:
        >>> resolve_limits({"macs": "2x"}, nn.Linear(100, 10), torch.randn(1, 100),
        ...                TimingSettings()).macs
        500.0
    """
    parsed = {name: Target.parse(value, f"target_{name}") for name, value in targets.items()
              if value is not None}
    ratios = {name for name, target in parsed.items() if target is not None and target.is_ratio}
    if ratios and reference is None:
        raise SconceError(f"ratio targets ({', '.join(sorted(ratios))}) need a reference "
                          "model to divide; give absolute values or a reference model")
    measured = (measure_reference(reference, example, ratios, timing, latency)
                if ratios and reference is not None else {})
    values = {name: target.limit(measured.get(name, 0.0)) for name, target in parsed.items()
              if target is not None}
    return Limits(**values)


class CostModel:
    """Costs of members of ``space``, computed when first asked for and cached by choice:
    deployed MACs (torchprofile, as the report counts them), params, size, and the lookup
    table's latency.

    Example:
        >>> from sconce_nas.space import declare_family
        >>> space = declare_family("doc-costs", {"w": (2, 4)}, lambda c: nn.Linear(8, c["w"]))
        >>> table = LatencyTable(TimingSettings(threads=1, rounds=1, round_seconds=0.01))
        >>> model = CostModel(space, torch.randn(1, 8), table)
        >>> model.violations({"w": 4}, Limits(params=20))
        {'params': 16.0}
        >>> model({"w": 2}).params
        18.0
    """

    CHEAP_FIRST: tuple[str, ...] = ("params", "size_mib", "latency_ms", "macs")
    """The order limits are checked in: the cheapest cost first."""

    def __init__(self, space: SearchSpace, example: torch.Tensor, table: LatencyTable,
                 models_kept: int = 8) -> None:
        self.space = space
        self.example = example
        self.table = table
        self._ctx = Context.for_inputs(example)
        self._values: dict[str, dict[str, float]] = {}
        self._models: OrderedDict[str, nn.Module] = OrderedDict()
        self._models_kept = models_kept

    def _deployed(self, key: str, choice: Choice) -> nn.Module:
        model = self._models.get(key)
        if model is None:
            model = self._models[key] = self.table.deployed(self.space, choice)
            if len(self._models) > self._models_kept:
                self._models.popitem(last=False)
        return model

    def cost(self, choice: Choice, name: str) -> float:
        """One cost (one of :data:`COSTS`) of member ``choice``."""
        key = self.space.key(choice)
        values = self._values.setdefault(key, {})
        if name not in values:
            model = self._deployed(key, choice)
            if name == "latency_ms":
                values[name] = self.table.predict(self.space, model, self.example)
            else:
                metric = {"macs": MACs, "params": Params, "size_mib": Size}[name]()
                values[name] = metric.measure(model, self._ctx)
        return values[name]

    def violations(self, choice: Choice, limits: Limits) -> dict[str, float]:
        """The first broken limit and its excess (cheapest costs checked first), or ``{}``."""
        active = limits.active()
        for name in self.CHEAP_FIRST:
            if name in active and (value := self.cost(choice, name)) > active[name]:
                return {name: value - active[name]}
        return {}

    def __call__(self, choice: Choice) -> Costs:
        return Costs(**{name: self.cost(choice, name) for name in COSTS})
