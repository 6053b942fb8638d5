"""The Pareto-front picture: validation accuracy against predicted latency and against MACs.

Example:
    >>> plot_pareto(outcome, chosen, limits, "pareto.png")  # doctest: +SKIP
    PosixPath('pareto.png')
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from sconce.plotting import new_figure, save_png
from sconce_nas.costs import Limits
from sconce_nas.nsga import Candidate, SearchOutcome

logger = logging.getLogger(__name__)

_PANELS = (("latency_ms", "predicted latency, batch 1 (ms)", 1.0),
           ("macs", "MACs (M)", 1e6))


def _front(candidates: Sequence[Candidate], cost: str) -> list[Candidate]:
    """The candidates no other one beats on both accuracy and ``cost``, cheapest first."""
    front: list[Candidate] = []
    for candidate in sorted(candidates, key=lambda c: (c.costs.get(cost), -c.accuracy)):
        if not front or candidate.accuracy > front[-1].accuracy:
            front.append(candidate)
    return front


def plot_pareto(outcome: SearchOutcome, chosen: Candidate, limits: Limits, path: str | Path,
                title: str = "Architecture search") -> Path:
    """Draw every scored candidate, each panel's Pareto front, the limits and the choice.

    Returns the path of the PNG (written atomically; matplotlib's global state is left
    alone).
    """
    figure = new_figure(11, 4.2)
    axes = figure.subplots(1, len(_PANELS))
    for axis, (cost, label, scale) in zip(axes, _PANELS, strict=True):
        xs = [c.costs.get(cost) / scale for c in outcome.candidates]
        axis.scatter(xs, [c.accuracy for c in outcome.candidates], s=10, color="#9aa7b8",
                     label=f"scored candidates ({len(outcome.candidates)})")
        front = _front(outcome.candidates, cost)
        axis.plot([c.costs.get(cost) / scale for c in front], [c.accuracy for c in front],
                  marker="o", markersize=4, color="#d9534f", label="Pareto front")
        axis.scatter([chosen.costs.get(cost) / scale], [chosen.accuracy], marker="*", s=220,
                     color="#f0ad4e", edgecolor="black", zorder=5, label="chosen")
        limit = limits.active().get(cost)
        if limit is not None:
            axis.axvline(limit / scale, color="black", linestyle="--", linewidth=0.9,
                         label="limit")
        axis.set_xlabel(label)
        axis.set_ylabel("validation accuracy (%)")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7, loc="lower right")
    figure.suptitle(f"{title}: {len(outcome.candidates)} candidates, "
                    f"{outcome.rejected} proposals over the limits", fontsize=10)
    figure.tight_layout()
    return save_png(figure, Path(path), dpi=110)
