"""The cubic sparsity schedule of Zhu & Gupta (2017), "To prune, or not to prune".

Sparsity rises from ``initial`` to ``final`` over ``steps`` pruning steps spread evenly
between the fractions ``start`` and ``end`` of training:
``s(t) = final + (initial - final) * (1 - (t - t0) / (t1 - t0)) ** 3``. It rises fast while
the network has many redundant weights and slowly near the end, and is exactly ``final`` at
the last pruning step.

Example:
    >>> schedule = CubicSchedule(initial=0.0, final=0.8, start=0.0, end=0.5, steps=4)
    >>> schedule.pruning_steps(100)
    [0, 12, 25, 38, 50]
    >>> [round(schedule.sparsity_at(step, 100), 4) for step in schedule.pruning_steps(100)]
    [0.0, 0.4488, 0.7, 0.7889, 0.8]
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["CubicSchedule"]


@dataclass(frozen=True)
class CubicSchedule:
    """When to prune, and how much.

    Attributes:
        initial: sparsity at the first pruning step.
        final: sparsity at the last pruning step and after.
        start: fraction of training at which pruning starts, in [0, 1).
        end: fraction at which ``final`` is reached, in (start, 1].
        steps: number of sparsity increases after the first pruning step.
    """

    initial: float
    final: float
    start: float = 0.0
    end: float = 0.6
    steps: int = 10

    def pruning_steps(self, total_steps: int) -> list[int]:
        """Optimizer steps after which masks are recomputed (0 means before training).

        The last is never past ``total_steps``; repeats (tiny runs) are removed.
        """
        first = round(self.start * total_steps)
        last = max(first, min(total_steps, round(self.end * total_steps)))
        points = [round(first + k * (last - first) / self.steps) for k in range(self.steps + 1)]
        return sorted(set(points))

    def sparsity_at(self, step: int, total_steps: int) -> float:
        """Target sparsity after ``step`` optimizer steps of ``total_steps``.

        Example:
            >>> CubicSchedule(0.0, 0.9, end=0.5).sparsity_at(60, 100)
            0.9
        """
        steps = self.pruning_steps(total_steps)
        first, last = steps[0], steps[-1]
        if step >= last:
            return self.final
        if step <= first:
            return self.initial
        progress = (step - first) / (last - first)
        return self.final + (self.initial - self.final) * (1.0 - progress) ** 3
