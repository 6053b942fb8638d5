"""Per-layer sensitivity and accuracy budgets: one framework for every technique.

Pruning ratios, which layers stay in float, which layers go sparse: each is a per-layer knob
whose cost is measured by compressing one layer at a time. This module knows nothing about
*how* a layer is compressed; the caller supplies one callable, and the rest is shared.

API:
    ``evaluate(ratios: Mapping[str, float]) -> EvalResult``
        Supplied by the caller. Compress each named layer to its ratio (the fraction of the
        layer compressed: pruned, or 1.0 for "quantized"; layers not named stay as they are),
        measure on a fixed *validation* subset, undo it, and return
        :class:`sconce.evaluation.EvalResult` (accuracy and loss). ``evaluate({})`` is the
        baseline.

    :func:`scan_sensitivity` ``(layers, evaluate, ratios) -> Sensitivity``
        Each layer compressed *alone* at each ratio: one accuracy/loss curve per layer.

    :func:`allocate` ``(sensitivity, sizes, target) -> dict[str, float]``
        Per-layer ratios with ``sum(r[l] * sizes[l]) == target * sum(sizes)``, minimising
        the summed loss increase the curves predict (greedy over each curve's convex hull,
        which is optimal for that separable model). ``sizes`` says what a layer's ratio is a
        fraction *of* (its weights for unstructured pruning; its channels for structured).

    :func:`choose_ratios` ``(sensitivity, sizes, evaluate, sparsity=... | max_accuracy_drop=...)``
        The allocation, *checked with all layers compressed together* on validation: it
        competes with uniform ratios and any extra ``candidates`` (e.g. global magnitude
        ranking), and the most accurate one is accepted. With ``max_accuracy_drop`` instead of
        ``sparsity``, it searches (:func:`sconce.budget.bisect`) the highest global target
        whose accepted allocation stays within the budget. Returns an :class:`Allocation`.

    :func:`plot_sensitivity` ``(sensitivity, figure=None, chosen=...) -> Figure``
        The curves (or, for single-ratio scans, the accuracy lost per layer as bars) with the
        chosen layers marked, drawn on a :class:`matplotlib.figure.Figure`
        (:func:`sconce.plotting.save_png` writes it).

Example:
    >>> from sconce.evaluation import EvalResult
    >>> sizes = {"a": 100, "b": 100}
    >>> def evaluate(ratios):  # layer "b" is fragile, "a" is not
    ...     wrong = int(100 * ratios.get("b", 0.0) ** 2) + int(10 * ratios.get("a", 0.0) ** 2)
    ...     return EvalResult(correct=100 - wrong, total=100, loss_sum=float(wrong))
    >>> sens = scan_sensitivity(["a", "b"], evaluate, ratios=(0.25, 0.5, 0.75, 0.9))
    >>> ratios = allocate(sens, sizes, target=0.5)
    >>> ratios["a"] > ratios["b"], round(sum(ratios.values()) / 2, 6)
    (True, 0.5)
    >>> choose_ratios(sens, sizes, evaluate, sparsity=0.5).method
    'sensitivity'
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from itertools import pairwise
from typing import TYPE_CHECKING, Any

from sconce.budget import bisect
from sconce.errors import ConfigError, TechniqueError
from sconce.evaluation import EvalResult
from sconce.plotting import COLOURS, new_figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure

logger = logging.getLogger(__name__)

Evaluator = Callable[[Mapping[str, float]], EvalResult]
"""Compress the named layers to their ratios, measure on validation, undo; see the module doc."""

CandidateFn = Callable[[float], Mapping[str, float]]
"""Per-layer ratios for a global target: an alternative allocation to check against."""

DEFAULT_RATIOS: tuple[float, ...] = (0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.98)
"""Ratios at which each layer is probed by default."""

SEARCH_TOLERANCE = 0.01
"""Resolution of the sparsity search under an accuracy budget."""

__all__ = [
    "DEFAULT_RATIOS", "Allocation", "CandidateFn", "Curve", "Evaluator", "Sensitivity",
    "allocate", "check_ratios", "choose_ratios", "plot_sensitivity", "scan_sensitivity",
]


@dataclass(frozen=True)
class Curve:
    """One layer compressed alone: validation accuracy (%) and loss at each ratio.

    Example:
        >>> Curve("fc", (0.5, 0.9), (90.0, 70.0), (0.3, 0.9)).accuracy_at(0.7)
        80.0
    """

    layer: str
    ratios: tuple[float, ...]
    accuracy: tuple[float, ...]
    loss: tuple[float, ...]

    def accuracy_at(self, ratio: float, baseline: float | None = None) -> float:
        """Accuracy interpolated at ``ratio`` (ratio 0 is ``baseline`` when given)."""
        xs, ys = list(self.ratios), list(self.accuracy)
        if baseline is not None:
            xs, ys = [0.0, *xs], [baseline, *ys]
        return _interpolate(xs, ys, ratio)


@dataclass
class Sensitivity:
    """The baseline and one :class:`Curve` per layer (in the order scanned).

    Attributes:
        baseline_accuracy: accuracy (%) of the uncompressed model on the same subset.
        baseline_loss: its mean loss.
        curves: layer name -> curve.
    """

    baseline_accuracy: float
    baseline_loss: float
    curves: dict[str, Curve] = field(default_factory=dict)

    @property
    def layers(self) -> list[str]:
        """Layer names, in scan order."""
        return list(self.curves)

    def drops(self) -> dict[str, float]:
        """Accuracy points each layer loses at its first probed ratio (alone).

        Example:
            >>> Sensitivity(90.0, 0.3, {"fc": Curve("fc", (1.0,), (88.5,), (0.4,))}).drops()
            {'fc': 1.5}
        """
        return {name: self.baseline_accuracy - curve.accuracy[0]
                for name, curve in self.curves.items()}

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form.

        Example:
            >>> Sensitivity(90.0, 0.3).to_dict()["baseline_accuracy"]
            90.0
        """
        return {"baseline_accuracy": self.baseline_accuracy, "baseline_loss": self.baseline_loss,
                "curves": {name: asdict(curve) for name, curve in self.curves.items()}}


@dataclass
class Allocation:
    """Accepted per-layer ratios and how they were checked.

    Attributes:
        ratios: layer -> fraction compressed.
        sparsity: the global fraction these ratios compress (weighted by ``sizes``).
        method: which candidate won ("sensitivity", "uniform", or a name you passed).
        accuracy: validation accuracy (%) with all layers compressed together.
        loss: the matching validation loss.
        baseline_accuracy: the dense model's accuracy on the same data.
        candidates: every candidate checked at the accepted sparsity: name -> accuracy, loss.
        probes: under an accuracy budget, each sparsity tried and its best accuracy.

    Example:
        >>> Allocation({"fc": 0.5}, 0.5, "uniform", 89.0, 0.4, 90.0).accuracy_drop
        1.0
    """

    ratios: dict[str, float]
    sparsity: float
    method: str
    accuracy: float
    loss: float
    baseline_accuracy: float
    candidates: dict[str, dict[str, float]] = field(default_factory=dict)
    probes: list[dict[str, Any]] = field(default_factory=list)

    @property
    def accuracy_drop(self) -> float:
        """Baseline accuracy minus accuracy with everything compressed together."""
        return self.baseline_accuracy - self.accuracy

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (ratios rounded to 4 digits)."""
        data = asdict(self)
        data["ratios"] = {k: round(v, 4) for k, v in self.ratios.items()}
        return data


def scan_sensitivity(
    layers: Sequence[str],
    evaluate: Evaluator,
    ratios: Sequence[float] = DEFAULT_RATIOS,
) -> Sensitivity:
    """Compress each layer alone at each ratio and record validation accuracy and loss.

    Args:
        layers: names the ``evaluate`` callable understands.
        evaluate: see the module docstring; called ``1 + len(layers) * len(ratios)`` times.
        ratios: increasing fractions in (0, 1] (1.0: the whole layer, e.g. quantized).

    Returns:
        The baseline and one curve per layer.

    Raises:
        ConfigError: when ``ratios`` is empty, unsorted, or outside (0, 1], or ``layers``
            is empty.

    Example:
        >>> from sconce.evaluation import EvalResult
        >>> sens = scan_sensitivity(["x"], lambda r: EvalResult(90, 100, 1.0), ratios=(0.5,))
        >>> sens.curves["x"].accuracy
        (90.0,)
    """
    grid = check_ratios(ratios, allow_whole=True)
    if not layers:
        raise ConfigError("no layers to analyse; every layer is skipped")
    base = evaluate({})
    sensitivity = Sensitivity(base.accuracy, base.loss)
    for layer in layers:
        results = [evaluate({layer: ratio}) for ratio in grid]
        sensitivity.curves[layer] = Curve(layer, grid, tuple(r.accuracy for r in results),
                                          tuple(r.loss for r in results))
        shown = ", ".join(f"{x:.0%}: {r.accuracy:.2f}%"
                          for x, r in zip(grid, results, strict=True))
        logger.debug("sensitivity of %s: %s", layer, shown)
    return sensitivity


def allocate(
    sensitivity: Sensitivity,
    sizes: Mapping[str, int | float],
    target: float,
    max_ratio: float | None = None,
) -> dict[str, float]:
    """Per-layer ratios that remove ``target`` of the total size at the least predicted cost.

    The cost of a layer at a ratio is its validation-loss increase when pruned alone
    (made non-decreasing, zero at ratio 0, interpolated linearly between probes). Costs are
    assumed additive; taking the cheapest *loss per removed unit* first on each curve's
    lower convex hull then minimises the summed cost exactly for that model.

    Args:
        sensitivity: from :func:`scan_sensitivity`.
        sizes: layer -> how much it weighs in the global target (e.g. its weight count).
            Every layer of ``sizes`` must have a curve.
        target: global fraction to remove, in [0, 1).
        max_ratio: cap on any layer's ratio (default: the largest probed ratio).

    Returns:
        layer -> ratio, for every layer of ``sizes``; ``sum(r * size) == target * total``.

    Raises:
        TechniqueError: when the target needs ratios above ``max_ratio``.

    Example:
        >>> sens = Sensitivity(90.0, 0.3, {
        ...     "a": Curve("a", (0.5, 0.9), (90.0, 89.0), (0.3, 0.4)),
        ...     "b": Curve("b", (0.5, 0.9), (80.0, 20.0), (0.9, 3.0))})
        >>> allocate(sens, {"a": 100, "b": 100}, 0.5)
        {'a': 0.9, 'b': 0.1}
    """
    if not 0.0 <= target < 1.0:
        raise ConfigError(f"target sparsity must be in [0, 1), got {target!r}")
    missing = [name for name in sizes if name not in sensitivity.curves]
    if missing:
        raise ConfigError(f"no sensitivity curve for {', '.join(missing)}; scan those layers")
    total = float(sum(sizes.values()))
    ratios = {name: 0.0 for name in sizes}
    need = target * total
    if need <= 0 or total <= 0:
        return ratios
    segments = []
    for name, size in sizes.items():
        if size <= 0:
            continue
        hull = _lower_hull(_cost_points(sensitivity, name, max_ratio))
        for order, ((r0, c0), (r1, c1)) in enumerate(pairwise(hull)):
            slope = (c1 - c0) / ((r1 - r0) * size)
            segments.append((slope, order, name, r0, r1, float(size)))
    segments.sort(key=lambda s: (s[0], s[1], -s[5]))
    removed = 0.0
    for _slope, _order, name, r0, r1, size in segments:
        gain = (r1 - r0) * size
        if removed + gain >= need:
            ratios[name] = r0 + (need - removed) / size
            return ratios
        ratios[name] = r1
        removed += gain
    reachable = removed / total
    raise TechniqueError(
        f"a global sparsity of {target:.1%} needs per-layer ratios above the largest allowed "
        f"({_max_ratio(sensitivity, max_ratio):.0%}); at most {reachable:.1%} is reachable. "
        "Lower the sparsity, skip fewer layers, or probe higher ratios"
    )


def choose_ratios(
    sensitivity: Sensitivity,
    sizes: Mapping[str, int | float],
    evaluate: Evaluator,
    *,
    sparsity: float | None = None,
    max_accuracy_drop: float | None = None,
    max_sparsity: float = 0.95,
    candidates: Mapping[str, CandidateFn] | None = None,
    max_ratio: float | None = None,
) -> Allocation:
    """Per-layer ratios checked with all layers compressed together on validation.

    Give exactly one of ``sparsity`` (a global target) or ``max_accuracy_drop`` (a budget in
    accuracy points: the highest sparsity up to ``max_sparsity`` that stays within it).

    At each sparsity the sensitivity allocation (:func:`allocate`), uniform ratios and every
    extra candidate are evaluated all together; the most accurate (then lowest-loss) one
    is accepted, ties going to the earlier in that order.

    Args:
        sensitivity: from :func:`scan_sensitivity`.
        sizes: layer -> weight in the global target.
        evaluate: the same kind of callable the scan used.
        sparsity: global target in [0, 1).
        max_accuracy_drop: accuracy points the compressed model may lose on validation.
        max_sparsity: upper end of the search under a budget.
        candidates: name -> function giving ratios for a target (e.g. global magnitude).
        max_ratio: cap on any layer's ratio (default: the largest probed ratio).

    Returns:
        The accepted :class:`Allocation`.

    Raises:
        ConfigError: when both or neither of ``sparsity`` and ``max_accuracy_drop`` are given.

    Example:
        >>> choose_ratios(sens, sizes, evaluate, max_accuracy_drop=1.0)  # doctest: +SKIP
        Allocation(ratios={...}, sparsity=0.62, method='sensitivity', ...)
    """
    if (sparsity is None) == (max_accuracy_drop is None):
        raise ConfigError("give either sparsity or max_accuracy_drop, not both or neither")
    extra = dict(candidates or {})
    if sparsity is not None:
        return _best_at(sensitivity, sizes, evaluate, sparsity, extra, max_ratio)
    if max_accuracy_drop is None or max_accuracy_drop < 0:
        raise ConfigError(f"max_accuracy_drop must be >= 0, got {max_accuracy_drop!r}")
    reachable = min(max_sparsity, _reachable(sensitivity, sizes, max_ratio))
    found = bisect(lambda target: _best_at(sensitivity, sizes, evaluate, target, extra,
                                           max_ratio),
                   lambda allocation: allocation.accuracy_drop <= max_accuracy_drop,
                   0.0, reachable, tolerance=SEARCH_TOLERANCE, try_high_first=True)
    best = found.result if found.result is not None else Allocation(
        {name: 0.0 for name in sizes}, 0.0, "none", sensitivity.baseline_accuracy,
        sensitivity.baseline_loss, sensitivity.baseline_accuracy)
    best.probes = [{"sparsity": round(p.value, 4), "accuracy": p.result.accuracy,
                    "method": p.result.method} for p in found.probes]
    logger.info("accuracy budget %.2f points: sparsity %.1f%% (%s, drop %.2f)",
                max_accuracy_drop, 100 * best.sparsity, best.method, best.accuracy_drop)
    return best


def plot_sensitivity(sensitivity: Sensitivity, figure: Figure | None = None, *,
                     chosen: Mapping[str, float] | None = None,
                     title: str = "Layer sensitivity") -> Figure:
    """Draw the scan on ``figure`` (a new one when None) and return it.

    Curves of validation accuracy against the ratio (each layer alone), with each layer's
    ``chosen`` ratio circled; a scan at a single ratio (quantized or not) is drawn as bars of
    the accuracy each layer loses alone, the ``chosen`` layers in red. Nothing global in
    matplotlib is touched; write the figure with :func:`sconce.plotting.save_png`.

    Example:
        >>> sens = Sensitivity(90.0, 0.3, {"fc": Curve("fc", (0.5, 0.9), (89.0, 70.0),
        ...                                              (0.4, 1.2))})
        >>> len(plot_sensitivity(sens, chosen={"fc": 0.5}).axes)
        1
    """
    chosen = dict(chosen or {})
    single = all(len(curve.ratios) == 1 for curve in sensitivity.curves.values())
    if figure is None:
        width = max(4.0, 0.4 * len(sensitivity.curves)) if single else 7.5
        figure = new_figure(width, 3.2 if single else 4.8)
    axes = figure.add_subplot()
    base = sensitivity.baseline_accuracy
    if single:
        names = sensitivity.layers
        drops = sensitivity.drops()
        axes.bar(range(len(names)), [drops[n] for n in names],
                 color=["tab:red" if n in chosen else "tab:blue" for n in names])
        axes.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
        axes.set_ylabel("validation accuracy lost (points)")
    else:
        for index, (name, curve) in enumerate(sensitivity.curves.items()):
            colour = COLOURS[index % len(COLOURS)]
            axes.plot([0.0, *(100 * r for r in curve.ratios)], [base, *curve.accuracy],
                      marker=".", label=name, linewidth=1.2, color=colour)
            if name in chosen:
                axes.plot([100 * chosen[name]], [curve.accuracy_at(chosen[name], base)],
                          marker="o", markersize=8, markerfacecolor="none", color=colour)
        axes.axhline(base, color="grey", linestyle="--", linewidth=0.8, label="baseline")
        axes.set_xlabel("fraction of the layer compressed (%)")
        axes.set_ylabel("validation accuracy (%)")
        axes.legend(fontsize=7, ncol=2, loc="lower left")
    axes.set_title(title, fontsize=9)
    axes.grid(alpha=0.3)
    return figure


# --- internals ----------------------------------------------------------------------------
def check_ratios(ratios: Sequence[float], *, allow_whole: bool = False) -> tuple[float, ...]:
    """The ratios as a tuple, or a :class:`ConfigError` unless strictly increasing in (0, 1)
    (or (0, 1] with ``allow_whole``).

    Example:
        >>> check_ratios([0.5, 0.9])
        (0.5, 0.9)
    """
    grid = tuple(float(r) for r in ratios)
    if not grid:
        raise ConfigError("sensitivity ratios must not be empty")
    if any(not (0.0 < r < 1.0 or (allow_whole and r == 1.0)) for r in grid):
        bound = "1]" if allow_whole else "1)"
        raise ConfigError(f"sensitivity ratios must be in (0, {bound}, got {list(grid)}")
    if any(b <= a for a, b in pairwise(grid)):
        raise ConfigError(f"sensitivity ratios must be strictly increasing, got {list(grid)}")
    return grid


def _max_ratio(sensitivity: Sensitivity, cap: float | None) -> float:
    largest = max(max(c.ratios) for c in sensitivity.curves.values())
    return largest if cap is None else min(cap, largest)


def _reachable(sensitivity: Sensitivity, sizes: Mapping[str, int | float],
               cap: float | None) -> float:
    total = float(sum(sizes.values()))
    if total <= 0:
        return 0.0
    return sum(min(max(sensitivity.curves[n].ratios), cap if cap is not None else 1.0) * s
               for n, s in sizes.items()) / total


def _cost_points(sensitivity: Sensitivity, name: str, cap: float | None
                 ) -> list[tuple[float, float]]:
    """(ratio, loss increase) from ratio 0, non-decreasing, cut at ``cap``."""
    curve = sensitivity.curves[name]
    points = [(0.0, 0.0)]
    running = 0.0
    for ratio, loss in zip(curve.ratios, curve.loss, strict=True):
        cost = loss - sensitivity.baseline_loss
        running = max(running, cost if math.isfinite(cost) else math.inf)
        points.append((ratio, running))
    if cap is not None and cap < points[-1][0]:
        xs, ys = [p[0] for p in points], [p[1] for p in points]
        points = [p for p in points if p[0] < cap] + [(cap, _interpolate(xs, ys, cap))]
    return [p for p in points if math.isfinite(p[1])]


def _lower_hull(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Lower convex hull of points sorted by x (Andrew's monotone chain)."""
    hull: list[tuple[float, float]] = []
    for point in points:
        while len(hull) >= 2 and _cross(hull[-2], hull[-1], point) <= 0:
            hull.pop()
        hull.append(point)
    return hull


def _cross(o: tuple[float, float], a: tuple[float, float], b: tuple[float, float]) -> float:
    return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])


def _interpolate(xs: Sequence[float], ys: Sequence[float], x: float) -> float:
    if x <= xs[0]:
        return ys[0]
    for (x0, y0), (x1, y1) in pairwise(zip(xs, ys, strict=True)):
        if x <= x1:
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return ys[-1]


def _best_at(sensitivity: Sensitivity, sizes: Mapping[str, int | float], evaluate: Evaluator,
             target: float, extra: Mapping[str, CandidateFn], cap: float | None) -> Allocation:
    """Evaluate every candidate allocation at ``target`` all together; keep the best."""
    options: dict[str, dict[str, float]] = {
        "sensitivity": allocate(sensitivity, sizes, target, cap),
        "uniform": {name: target for name in sizes},
    }
    for name, make in extra.items():
        options[name] = {layer: float(r) for layer, r in make(target).items()}
    checked: dict[str, dict[str, float]] = {}
    best_name, best_result = "", None
    for name, ratios in options.items():
        result = evaluate(ratios)
        checked[name] = {"accuracy": result.accuracy, "loss": result.loss}
        if best_result is None or (result.accuracy, -result.loss) > (
                best_result.accuracy, -best_result.loss):
            best_name, best_result = name, result
    if best_result is None:  # pragma: no cover - "sensitivity" and "uniform" always run
        raise TechniqueError("no candidate allocation was evaluated")
    total = float(sum(sizes.values())) or 1.0
    ratios = options[best_name]
    achieved = sum(ratios.get(n, 0.0) * s for n, s in sizes.items()) / total
    logger.info("sparsity %.1f%%: %s", 100 * target, ", ".join(
        f"{n} {c['accuracy']:.2f}%" for n, c in checked.items()))
    return Allocation(dict(ratios), achieved, best_name, best_result.accuracy, best_result.loss,
                      sensitivity.baseline_accuracy, checked)
