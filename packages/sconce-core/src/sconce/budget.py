"""One bisection for every "how far can we go" search: a monotone yes/no over a range.

An accuracy budget (the highest sparsity that stays within ``max_accuracy_drop``), a size or
MACs target (the smallest pruning ratio that reaches it), the fewest layers kept in float: each
is a threshold on a line where a *probe* (evaluate, measure, build) is costly and its answer
changes once. :func:`bisect` finds that threshold with the fewest probes and keeps what every
probe returned, so the caller reuses the accepted result instead of computing it again.

``want="largest"``: the probe is accepted up to a threshold (low values are safe), e.g.
sparsity under an accuracy budget. ``want="smallest"``: accepted from a threshold on, e.g. the
pruning ratio that meets a MACs target. ``low`` is never probed (it is the known-safe side for
``"largest"``, the known-failing side for ``"smallest"``) and ``high`` is probed first only
with ``try_high_first``.

Example:
    >>> found = bisect(lambda x: x * x, lambda y: y <= 0.25, 0.0, 1.0, tolerance=0.01)
    >>> round(found.value, 2), found.result <= 0.25
    (0.5, True)
    >>> bisect(lambda n: n, lambda n: n >= 3, 1, 10, want="smallest", integer=True).value
    3
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, Literal, TypeVar

from sconce.errors import ConfigError

__all__ = ["Bisection", "Probe", "bisect"]

T = TypeVar("T")


@dataclass(frozen=True)
class Probe(Generic[T]):
    """One point tried: its value, what the probe returned, and whether it was accepted.

    Example:
        >>> Probe(0.5, 91.2, True).accepted
        True
    """

    value: float
    result: T
    accepted: bool


@dataclass
class Bisection(Generic[T]):
    """The threshold found: the best accepted value and its result (None when none was).

    Attributes:
        value: the largest (``want="largest"``) or smallest accepted value probed, or None.
        result: what the probe returned there, or None.
        probes: every point tried, in order.

    Example:
        >>> Bisection(None, None).found
        False
    """

    value: float | None
    result: T | None
    probes: list[Probe[T]] = field(default_factory=list)

    @property
    def found(self) -> bool:
        """Whether some probed value was accepted."""
        return self.value is not None


def bisect(
    probe: Callable[[float], T],
    accept: Callable[[T], bool],
    low: float,
    high: float,
    *,
    want: Literal["largest", "smallest"] = "largest",
    tolerance: float = 0.01,
    steps: int | None = None,
    integer: bool = False,
    try_high_first: bool = False,
) -> Bisection[T]:
    """Find the largest (or smallest) value in ``[low, high]`` whose probe is accepted.

    Args:
        probe: computes the result at a value (the costly part: it runs once per value).
        accept: whether a result is good enough; monotone along the range.
        low, high: the range.
        want: ``"largest"`` (accepted below a threshold) or ``"smallest"`` (above it).
        tolerance: continuous search stops once the bracket is this narrow ...
        steps: ... or after this many probes, when given.
        integer: search integers (every integer of the range is reachable).
        try_high_first: probe ``high`` before bisecting; done at once when it is accepted
            (for ``"largest"``) or the search starts from it.

    Returns:
        A :class:`Bisection` with the best accepted value and every probe.

    Raises:
        ConfigError: ``low > high``, or a tolerance that is not positive.

    Example:
        >>> found = bisect(lambda r: 1.0 - r, lambda macs: macs <= 0.3, 0.0, 0.95,
        ...                want="smallest", steps=7)
        >>> round(found.value, 3), len(found.probes)
        (0.705, 7)
    """
    if low > high:
        raise ConfigError(f"bisect needs low <= high, got {low!r} > {high!r}")
    if tolerance <= 0:
        raise ConfigError(f"bisect needs a positive tolerance, got {tolerance!r}")
    outcome: Bisection[T] = Bisection(None, None)

    def run(value: float) -> bool:
        result = probe(value)
        accepted = bool(accept(result))
        outcome.probes.append(Probe(value, result, accepted))
        better = outcome.value is None or (value > outcome.value if want == "largest"
                                           else value < outcome.value)
        if accepted and better:
            outcome.value, outcome.result = value, result
        return accepted

    if try_high_first and run(high):
        if want == "largest":
            return outcome
    elif try_high_first and want == "smallest":
        return outcome  # nothing in the range is accepted
    if integer:
        lo, hi = int(low), int(high)
        while lo <= hi and (steps is None or len(outcome.probes) < steps):
            point = (lo + hi) // 2
            if run(point) == (want == "largest"):
                lo = point + 1
            else:
                hi = point - 1
        return outcome
    lo_f, hi_f = float(low), float(high)
    while (hi_f - lo_f > tolerance) if steps is None else len(outcome.probes) < steps:
        middle = (lo_f + hi_f) / 2
        if run(middle) == (want == "largest"):
            lo_f = middle
        else:
            hi_f = middle
    return outcome
