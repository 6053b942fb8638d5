"""Mixed precision under an accuracy budget: keep the most sensitive layers in float.

When the run sets ``max_accuracy_drop`` and the all-int8 model loses more than that on the
validation split, each layer's sensitivity is measured with the core's framework
(:func:`sconce.sensitivity.scan_sensitivity` at ratio 1.0: the validation accuracy lost when
only that layer is quantized, simulated), and the fewest most-sensitive layers are kept in
float such that the real int8 model meets the budget (:func:`sconce.budget.bisect` over how
many, each step built and evaluated on the engine).

Example:
    >>> plan = BudgetResult(built=None, kept_float=["fc"], accuracy=97.0, target=96.5)
    >>> plan.met
    True
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from sconce.budget import bisect
from sconce.context import Context
from sconce.evaluation import EvalResult
from sconce.sensitivity import Sensitivity, scan_sensitivity
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
        sensitivity: each layer quantized alone (None when the budget held without it).

    Example:
        >>> BudgetResult(built=None, kept_float=[], accuracy=90.0, target=91.0).met
        False
    """

    built: Built | None
    kept_float: list[str]
    accuracy: float
    target: float
    sensitivity: Sensitivity | None = None

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
                      calibration: str, percentile: float, samples: int) -> Sensitivity:
    """Each layer quantized alone (simulated) on the validation split.

    Example:
        >>> layer_sensitivity(model, ctx, ["fc"], batches, levels=256, per_channel=True,
        ...                   calibration="mse", percentile=99.99,
        ...                   samples=1000).drops()  # doctest: +SKIP
        {'fc': 0.4}
    """
    estimators = calibrate_inputs(model, layers, batches)
    ranges = {name: estimators[name].range(calibration, levels=levels, percentile=percentile)
              for name in layers if not estimators[name].empty}

    def evaluate(chosen: Mapping[str, float]) -> EvalResult:
        with simulated(model, {name: ranges[name] for name in chosen}, levels=levels,
                       per_channel=per_channel):
            return ctx.evaluate(model, "val", samples)

    return scan_sensitivity(list(ranges), evaluate, ratios=(1.0,))


def fit_budget(
    model: nn.Module,
    ctx: Context,
    build: Callable[[Sequence[str]], Built],
    full: Built,
    sensitivity: Callable[[], Sensitivity],
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
        sensitivity: scans each layer quantized alone (only called when needed).
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
    scan = sensitivity()
    drops = scan.drops()
    order = sorted(drops, key=lambda name: drops[name], reverse=True)
    if not order:
        return BudgetResult(full, [], accuracy, target, scan)

    def keep_float(count: float) -> tuple[Built, float]:
        built = build(order[:int(count)])
        value = ctx.evaluate(built.module, "val", samples).accuracy
        logger.info("%d layer(s) in float: validation accuracy %.2f (target %.2f)",
                    int(count), value, target)
        return built, value

    found = bisect(keep_float, lambda result: result[1] >= target, 1, len(order),
                   want="smallest", integer=True)
    count = int(found.value) if found.value is not None else len(order)
    built, value = found.result if found.result is not None else keep_float(len(order))
    return BudgetResult(built, order[:count], value, target, scan)
