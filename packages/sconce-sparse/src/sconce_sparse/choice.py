"""Choosing a layer's formats from its measurements: a pure function, so it can be checked.

For each measured batch size the layer was timed in every format, round after round with the
formats interleaved (see :mod:`sconce_sparse.timing`). A format's speed-up over dense is the
median over rounds of ``dense / format`` taken within the same round, so a burst of load on a
shared machine slows both sides of a ratio alike. The fastest sparse format is chosen for a
batch size only when that speed-up is at least ``min_speedup``; otherwise the layer stays
dense there. Batch sizes whose choices agree share one entry of the plan; where they differ,
inputs switch formats at the geometric mean of the two measured row counts.

Example:
    >>> m1 = Measurement(batch=1, rows=1, times={"dense": [2.0, 2.2], "csr": [1.0, 1.2]})
    >>> m64 = Measurement(batch=64, rows=64, times={"dense": [9.0, 9.5], "csr": [9.2, 9.6]})
    >>> round(m1.speedup("csr"), 3)
    1.917
    >>> choose_plan([m1, m64], min_speedup=1.1)
    ((8, 'csr'), (None, 'dense'))
"""

from __future__ import annotations

import logging
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sconce_sparse.layers import Plan

logger = logging.getLogger(__name__)

__all__ = ["Measurement", "choose_format", "choose_plan"]


@dataclass
class Measurement:
    """A layer's times at one batch size, in every format.

    Attributes:
        batch: the model's batch size.
        rows: the rows the layer's kernel sees at that batch size.
        times: format -> milliseconds per call in each round (same rounds for every format).
    """

    batch: int
    rows: int
    times: dict[str, list[float]] = field(default_factory=dict)

    def ms(self, name: str) -> float:
        """The format's time: the median of its rounds.

        Example:
            >>> Measurement(1, 1, {"dense": [3.0, 1.0, 2.0]}).ms("dense")
            2.0
        """
        return statistics.median(self.times[name])

    def speedup(self, name: str) -> float:
        """Median over rounds of ``dense / name`` within each round (>1: faster than dense).

        Example:
            >>> Measurement(1, 1, {"dense": [4.0, 8.0], "csr": [2.0, 2.0]}).speedup("csr")
            3.0
        """
        return statistics.median(d / t for d, t in zip(self.times["dense"], self.times[name],
                                                       strict=True))

    def to_dict(self) -> dict[str, Any]:
        """JSON-able: rows, median ms and speed-up per format, and every round's times.

        Example:
            >>> Measurement(1, 1, {"dense": [2.0], "csr": [1.0]}).to_dict()["speedup"]
            {'csr': 2.0}
        """
        return {"batch": self.batch, "rows": self.rows,
                "ms": {name: round(self.ms(name), 5) for name in self.times},
                "speedup": {name: round(self.speedup(name), 3) for name in self.times
                            if name != "dense"},
                "rounds_ms": {name: list(times) for name, times in self.times.items()}}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Measurement:
        """The measurement :meth:`to_dict` wrote (its rounds, exactly).

        Example:
            >>> m = Measurement(8, 8, {"dense": [2.0, 2.5], "csr": [1.0, 1.5]})
            >>> Measurement.from_dict(m.to_dict()) == m
            True
        """
        return cls(int(data["batch"]), int(data["rows"]),
                   {name: [float(t) for t in times] for name, times in data["rounds_ms"].items()})


def choose_format(measurement: Measurement, min_speedup: float) -> str:
    """The fastest sparse format if it beats dense by ``min_speedup``, else ``dense``.

    Example:
        >>> choose_format(Measurement(1, 1, {"dense": [1.0], "csr": [0.95]}), 1.1)
        'dense'
    """
    sparse = [name for name in measurement.times if name != "dense"]
    if not sparse:
        return "dense"
    best = max(sparse, key=measurement.speedup)
    return best if measurement.speedup(best) >= min_speedup else "dense"


def choose_plan(measurements: Sequence[Measurement], min_speedup: float) -> Plan:
    """The layer's plan: a format per measured batch size, merged where they agree.

    Example:
        >>> choose_plan([Measurement(1, 1, {"dense": [1.0], "csr": [0.5]})], 1.1)
        ((None, 'csr'),)
    """
    ordered = sorted(measurements, key=lambda m: m.rows)
    choices = [(m.rows, choose_format(m, min_speedup)) for m in ordered]
    plan: list[tuple[int | None, str]] = []
    for index, (rows, name) in enumerate(choices):
        following = choices[index + 1] if index + 1 < len(choices) else None
        if following is not None and following[1] == name:
            continue
        limit = None if following is None else int(math.sqrt(rows * following[0]))
        plan.append((limit, name))
    return tuple(plan) if plan else ((None, "dense"),)
