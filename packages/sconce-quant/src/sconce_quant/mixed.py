"""Mixed precision under an accuracy budget: keep the most sensitive layers in float.

When the run sets ``max_accuracy_drop`` and the all-int8 model loses more than that on the
validation split, each layer's sensitivity is measured (the validation accuracy lost when only
that layer is quantized, simulated), and the fewest most-sensitive layers are kept in float
such that the real int8 model meets the budget (a binary search over how many, each step built
and evaluated on the engine).

Example:
    >>> plan = BudgetResult(built=None, kept_float=["fc"], accuracy=97.0, target=96.5)
    >>> plan.met
    True
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from sconce.context import Context
from sconce_quant.engines.base import Built
from sconce_quant.simulate import calibrate_inputs, simulated

logger = logging.getLogger(__name__)


@dataclass
class BudgetResult:
    """What fitting the budget decided.

    Attributes:
        built: the int8 model finally chosen.
        kept_float: layers kept in float, most sensitive first.
        accuracy: its validation accuracy.
        target: the accuracy it had to reach.
        sensitivity: validation accuracy lost per layer when only it is quantized.

    Example:
        >>> BudgetResult(built=None, kept_float=[], accuracy=90.0, target=91.0).met
        False
    """

    built: Built | None
    kept_float: list[str]
    accuracy: float
    target: float
    sensitivity: dict[str, float] = field(default_factory=dict)

    @property
    def met(self) -> bool:
        """Whether the chosen model reaches the target."""
        return self.accuracy >= self.target - 1e-9


def reference_accuracy(model: nn.Module, ctx: Context, samples: int) -> float:
    """Validation accuracy the budget counts from: the original model's (the teacher), else
    this stage's input model's.

    Example:
        >>> reference_accuracy(model, ctx, samples=1000)  # doctest: +SKIP
        97.5
    """
    reference = ctx.teacher if ctx.teacher is not None else model
    return ctx.evaluate(reference, "val", samples).accuracy


def layer_sensitivity(model: nn.Module, ctx: Context, layers: Sequence[str],
                      batches: Sequence[Any], *, levels: int, per_channel: bool,
                      calibration: str, percentile: float, samples: int) -> dict[str, float]:
    """Validation accuracy lost when only each layer is quantized (simulated), per layer.

    Example:
        >>> layer_sensitivity(model, ctx, ["fc"], batches, levels=256, per_channel=True,
        ...                   calibration="mse", percentile=99.99, samples=1000)  # doctest: +SKIP
        {'fc': 0.4}
    """
    estimators = calibrate_inputs(model, layers, batches)
    base = ctx.evaluate(model, "val", samples).accuracy
    drops = {}
    for name in layers:
        if estimators[name].empty:
            continue
        low_high = estimators[name].range(calibration, levels=levels, percentile=percentile)
        with simulated(model, {name: low_high}, levels=levels, per_channel=per_channel):
            drops[name] = base - ctx.evaluate(model, "val", samples).accuracy
    return drops


def fit_budget(
    model: nn.Module,
    ctx: Context,
    build: Callable[[Sequence[str]], Built],
    full: Built,
    sensitivity: Callable[[], dict[str, float]],
    *,
    max_drop: float,
    samples: int,
) -> BudgetResult:
    """Keep the fewest most sensitive layers in float so the int8 model meets ``max_drop``.

    Args:
        model: the float model of this stage.
        ctx: the run's context (validation data, teacher).
        build: makes the int8 model with the given layers kept in float.
        full: the all-int8 model (already built).
        sensitivity: computes the per-layer sensitivity (only called when needed).
        max_drop: accuracy points the run may lose against the original model.
        samples: validation samples per evaluation.

    Example:
        >>> fit_budget(model, ctx, build, full, sensitivity, max_drop=0.5,
        ...            samples=2000).kept_float  # doctest: +SKIP
        ['classifier.3']
    """
    target = reference_accuracy(model, ctx, samples) - max_drop
    accuracy = ctx.evaluate(full.module, "val", samples).accuracy
    if accuracy >= target:
        return BudgetResult(full, [], accuracy, target)
    drops = sensitivity()
    order = sorted(drops, key=lambda name: drops[name], reverse=True)
    best: BudgetResult | None = None
    low, high = 1, len(order)
    while low <= high:  # fewest float layers that meet the target
        count = (low + high) // 2
        built = build(order[:count])
        value = ctx.evaluate(built.module, "val", samples).accuracy
        logger.info("%d layer(s) in float: validation accuracy %.2f (target %.2f)",
                    count, value, target)
        if value >= target:
            best = BudgetResult(built, order[:count], value, target, drops)
            high = count - 1
        else:
            low = count + 1
    if best is not None:
        return best
    built = build(order)
    value = ctx.evaluate(built.module, "val", samples).accuracy
    return BudgetResult(built, order, value, target, drops)
