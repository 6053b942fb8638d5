"""A latency lookup table measured on this machine, and its check against measured latency.

Each subnet is cut into units (:meth:`SearchSpace.latency_units`: for the elastic CNN the
stem, every block and the head). A unit is identified by its structure and its input shape;
the table times each unit alone, at batch 1 with exactly the run's thread count (in two
passes, keeping the faster: :data:`UNIT_PASSES`), and predicts a subnet's latency from the
sum of its units' times along a line, ``scale x (sum + overhead_ms)``, fitted on a few
calibration subnets (:func:`fit_line`, Theil-Sen). A line, not a constant gap: a whole subnet
runs slower than its units timed alone, the more so the larger it is (its weights no longer
stay in cache between calls); with one constant, the check's subnets of 0.37 ms were
predicted 13% slow and those of 1.1 ms 8-18% fast. A shared machine's speed drifts (the same
VGG measured 1.22 ms in one run and 1.49 ms in the next, and a table kept from the first
predicted the second run's subnets 20% too fast), so a search re-anchors the line to the
machine's speed of the moment before it uses it (:meth:`LatencyTable.rescale`: the
calibration subnets timed again), and the units of a table kept from an earlier run are
timed again the first time this run uses them (kept times missed by a median 3.4-6.2%,
fresh ones by 1.8-3.3%, on the same 50 subnets).

Every time here (units, whole subnets, and the reference a ratio limit divides) is the
fastest call after a warm-up (:func:`fastest_ms`): the call the machine disturbed least. On a
shared VM it reproduces where a median does not: 40 random subnets timed twice, one thread,
0.3 s each, agreed within 10% on 95% of them by their fastest call and on 53% by their
median (2-core AVX2 VM, 2026-12-01). Predictions
cost a batch-1 forward pass instead of a timing run; :meth:`LatencyTable.check` compares them
with measured latency on subnets the calibration never saw.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from sconce_nas.space import declare_family
    >>> space = declare_family("doc-lut", {"w": (4, 8)}, lambda c: nn.Sequential(
    ...     nn.Conv2d(1, c["w"], 3), nn.ReLU(), nn.Flatten()))
    >>> table = LatencyTable(TimingSettings(threads=1, rounds=1, round_seconds=0.01,
    ...                                     warmup_seconds=0.0))
    >>> table.predict(space, space.build({"w": 4}), torch.randn(1, 1, 8, 8)) > 0
    True
    >>> len(table.entries)
    3
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import platform
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sconce.metrics.timing import TimingSettings, fixed_threads
from sconce.storage import atomic_write_json
from sconce_nas.deploy import deploy
from sconce_nas.space import Choice, SearchSpace

logger = logging.getLogger(__name__)

FORMAT = "sconce-nas-latency-table"
UNIT_SHARE = 0.2
"""A unit is timed for this share of the table's timing (``rounds x round_seconds`` of calls
after ``warmup_seconds`` of warm-up)."""
MODEL_SHARE = 0.5
"""A whole subnet (calibration, check, candidates, the reference) is timed for this share."""
MIN_CALLS = 20
"""Timed calls at least, however long they take."""
UNIT_PASSES = 2
"""Passes over a member's new units, each unit timed once per pass: a unit timed while the
machine was slow would otherwise over-predict every member that contains it."""
CHECK_PASSES = 4
"""Passes of :meth:`LatencyTable.check` over its subnets, each subnet keeping its fastest."""


def fit_line(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    """``(slope, intercept)`` of ``y ~ slope * x + intercept`` by Theil-Sen: the median of
    the slopes between every two points, then the median intercept. One point far off (a
    subnet timed while the machine was busy) moves neither. With fewer than two distinct
    ``x``, the line through the origin and the median ratio.

    Example:
        >>> fit_line([1.0, 2.0, 3.0, 4.0, 5.0], [1.5, 2.5, 3.5, 4.5, 20.0])
        (1.0, 0.5)
    """
    pairs = [(v2 - v1) / (u2 - u1)
             for (u1, v1), (u2, v2) in itertools.combinations(zip(x, y, strict=True), 2)
             if u2 != u1]
    if not pairs:
        ratios = [v / u for u, v in zip(x, y, strict=True) if u]
        return (statistics.median(ratios) if ratios else 1.0), 0.0
    slope = statistics.median(pairs)
    return slope, statistics.median(v - slope * u for u, v in zip(x, y, strict=True))


def fastest_ms(call: Callable[[], object], threads: int, seconds: float,
               warmup_seconds: float) -> float:
    """Milliseconds of the fastest of the calls made in ``seconds`` (and at least
    :data:`MIN_CALLS`), after ``warmup_seconds`` of untimed calls, on exactly ``threads``
    threads, without autograd.

    Example:
        >>> fastest_ms(lambda: sum(range(100)), threads=1, seconds=0.01,
        ...            warmup_seconds=0.0) > 0
        True
    """
    with fixed_threads(threads), torch.inference_mode():
        call()  # first-call set-up, never timed
        deadline = time.perf_counter() + warmup_seconds
        while time.perf_counter() < deadline:
            call()
        best, calls = float("inf"), 0
        deadline = time.perf_counter() + seconds
        while calls < MIN_CALLS or time.perf_counter() < deadline:
            started = time.perf_counter()
            call()
            best = min(best, time.perf_counter() - started)
            calls += 1
    return best * 1e3


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@dataclass
class LatencyCheck:
    """Predicted against measured latency (ms, batch 1) on subnets the table was not fitted on.

    Example:
        >>> LatencyCheck([1.0, 2.0], [1.05, 2.5]).within(0.10)
        0.5
    """

    predicted: list[float] = field(default_factory=list)
    measured: list[float] = field(default_factory=list)

    @property
    def errors(self) -> list[float]:
        """Relative errors ``predicted / measured - 1``."""
        return [p / m - 1.0 for p, m in zip(self.predicted, self.measured, strict=True)]

    def within(self, tolerance: float = 0.10) -> float:
        """The fraction of subnets predicted within ``tolerance`` (relative)."""
        errors = self.errors
        return sum(abs(e) <= tolerance for e in errors) / len(errors) if errors else 0.0

    def to_dict(self) -> dict[str, Any]:
        """Plain values for JSON reports."""
        errors = [abs(e) for e in self.errors]
        return {"subnets": len(errors), "within_10pct": self.within(0.10),
                "median_abs_error": statistics.median(errors) if errors else None,
                "max_abs_error": max(errors) if errors else None,
                "predicted_ms": self.predicted, "measured_ms": self.measured}


class LatencyTable:
    """Batch-1 latency of each unit measured here; predictions are sums on a fitted line.

    Args:
        timing: threads and length of every timing (:func:`fastest_ms`); a unit is timed
            for :data:`UNIT_SHARE` of ``timing.rounds x timing.round_seconds``, a whole
            subnet for :data:`MODEL_SHARE` (default: :class:`sconce.TimingSettings`).
        path: a JSON file that keeps the table between runs; a table measured on another
            machine, torch version or thread count is not reused.
        channels_last: time (and deploy) conv weights channels-last.
        retime_kept: time the units loaded from ``path`` again the first time they are
            used (the default: they were measured in another run, at another moment of the
            machine); False trusts them as measured now (a table this run has just saved).

    Example:
        >>> LatencyTable(TimingSettings(threads=1)).overhead_ms
        0.0
    """

    def __init__(self, timing: TimingSettings | None = None, *, path: str | Path | None = None,
                 channels_last: bool = False, retime_kept: bool = True) -> None:
        self.timing = timing or TimingSettings()
        self.threads = self.timing.threads
        self.channels_last = channels_last
        self.path = Path(path) if path is not None else None
        self.entries: dict[str, float] = {}
        self.overhead_ms = 0.0
        self.calibrated = False
        self.scale = 1.0  # the line's slope: predicted = scale * (unit sum + overhead_ms)
        self._timed_now: set[str] = set()  # entries timed by this object, not loaded
        self._header = {"format": FORMAT, "torch": torch.__version__, "cpu": _cpu_name(),
                        "threads": self.threads, "channels_last": channels_last,
                        "statistic": "fastest call"}
        if self.path is not None and self.path.is_file():
            self._load(self.path)
            if not retime_kept:
                self._timed_now.update(self.entries)

    def _load(self, path: Path) -> None:
        try:
            saved = json.loads(path.read_text("utf-8"))
        except (OSError, json.JSONDecodeError):
            return
        if saved.get("header") != self._header:
            logger.info("latency table %s was measured elsewhere; measuring again", path)
            return
        self.entries = {str(k): float(v) for k, v in saved.get("entries", {}).items()}
        self.overhead_ms = float(saved.get("overhead_ms", 0.0))
        self.scale = float(saved.get("scale", 1.0))
        self.calibrated = bool(saved.get("calibrated", False))

    def save(self) -> None:
        """Write the table to its path (atomically), if it has one."""
        if self.path is not None:
            atomic_write_json(self.path, {"header": self._header, "entries": self.entries,
                                          "overhead_ms": self.overhead_ms, "scale": self.scale,
                                          "calibrated": self.calibrated})

    # --- units -----------------------------------------------------------------------------
    def _time(self, call: Callable[[], object], share: float) -> float:
        return fastest_ms(call, self.threads,
                          self.timing.rounds * self.timing.round_seconds * share,
                          self.timing.warmup_seconds * share)

    def units(self, space: SearchSpace, model: nn.Module, example: torch.Tensor
              ) -> list[tuple[str, nn.Module, torch.Tensor]]:
        """``(key, unit, its batch-1 input)`` for each unit of the deployed ``model``."""
        units = space.latency_units(model)
        captured: dict[int, torch.Tensor] = {}

        def capture(index: int) -> Any:
            def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
                captured.setdefault(index, args[0].detach())
            return hook

        handles = [unit.register_forward_pre_hook(capture(i)) for i, unit in enumerate(units)]
        try:
            with torch.inference_mode():
                model(example)
        finally:
            for handle in handles:
                handle.remove()
        out = []
        for index, unit in enumerate(units):
            if index not in captured:
                continue  # a unit the forward pass never reached
            inputs = captured[index]
            text = f"{unit!r}|{tuple(inputs.shape)}|{inputs.dtype}|cl={self.channels_last}"
            out.append((hashlib.sha1(text.encode()).hexdigest()[:20], unit, inputs))
        return out

    def _measure_unit(self, unit: nn.Module, inputs: torch.Tensor) -> float:
        unit.eval()
        return self._time(lambda: unit(inputs), UNIT_SHARE)

    def deployed(self, space: SearchSpace, choice: Choice) -> nn.Module:
        """A freshly built member in its deployed form (what is timed)."""
        return deploy(space.build(choice), channels_last=self.channels_last, inplace=True)

    def unit_sum(self, space: SearchSpace, model: nn.Module, example: torch.Tensor) -> float:
        """The sum of the units' times (ms). Units this table has not timed yet (new ones,
        and those kept from an earlier run) are timed now, in :data:`UNIT_PASSES` passes over
        all of them, keeping each one's fastest."""
        units = self.units(space, model, example)
        new = {key: (unit, inputs) for key, unit, inputs in units if key not in self._timed_now}
        fastest = dict.fromkeys(new, float("inf"))
        for _ in range(UNIT_PASSES):
            for key, (unit, inputs) in new.items():
                fastest[key] = min(fastest[key], self._measure_unit(unit, inputs))
        self.entries.update(fastest)
        self._timed_now.update(fastest)
        return sum(self.entries[key] for key, _, _ in units)

    def predict(self, space: SearchSpace, model: nn.Module, example: torch.Tensor) -> float:
        """Predicted batch-1 latency (ms) of the deployed ``model``."""
        return self.scale * (self.unit_sum(space, model, example) + self.overhead_ms)

    def measure(self, model: nn.Module, example: torch.Tensor) -> float:
        """Measured batch-1 latency (ms) of ``model`` as it is (its fastest call)."""
        model.eval()
        return self._time(lambda: model(example), MODEL_SHARE)

    def measure_in_passes(self, models: Sequence[nn.Module], example: torch.Tensor,
                          passes: int = CHECK_PASSES) -> list[float]:
        """Each model's measured batch-1 latency (ms): ``passes`` passes over all of them,
        each model keeping its fastest, so one slow moment does not decide a model's figure.

        Example:
            >>> table.measure_in_passes([model_a, model_b], example)  # doctest: +SKIP
            [0.41, 0.73]
        """
        fastest = [float("inf")] * len(models)
        for _ in range(max(1, passes)):
            for index, model in enumerate(models):
                fastest[index] = min(fastest[index], self.measure(model, example))
        return fastest

    # --- calibration and check ---------------------------------------------------------------
    def calibrate(self, space: SearchSpace, example: torch.Tensor,
                  choices: Iterable[Choice]) -> float:
        """Fit the line from unit sums to measured latency on ``choices`` (the calibration
        subnets). Returns :attr:`overhead_ms`."""
        self._fit(space, example, choices)
        self.calibrated = True
        logger.info("latency table: %d units, predicted = %.3f x (unit sum + %.4f ms)",
                    len(self.entries), self.scale, self.overhead_ms)
        self.save()
        return self.overhead_ms

    def rescale(self, space: SearchSpace, example: torch.Tensor, choices: Iterable[Choice]
                ) -> float:
        """Re-anchor predictions to the machine's speed now: time ``choices`` (the
        calibration subnets) again and fit the line again. Returns :attr:`scale`.

        Example:
            >>> table.rescale(space, example, calibration_choices)  # doctest: +SKIP
            1.18
        """
        self._fit(space, example, choices)
        logger.info("latency table re-anchored: predicted = %.3f x (unit sum + %.4f ms)",
                    self.scale, self.overhead_ms)
        self.save()
        return self.scale

    def _fit(self, space: SearchSpace, example: torch.Tensor, choices: Iterable[Choice]
             ) -> None:
        sums, measured = [], []
        for choice in choices:
            model = self.deployed(space, choice)
            sums.append(self.unit_sum(space, model, example))
            measured.append(self.measure(model, example))
        self._set_line(sums, measured)

    def _set_line(self, sums: Sequence[float], measured: Sequence[float]) -> None:
        """``scale`` and ``overhead_ms`` from the line fitted to ``(sum, measured)``; a line
        that does not rise (too few or too noisy points) keeps the overhead and takes the
        median ratio as the scale."""
        if not sums:
            return
        slope, intercept = fit_line(sums, measured)
        if slope > 0:
            self.scale, self.overhead_ms = slope, intercept / slope
        else:
            self.scale = statistics.median(
                m / (s + self.overhead_ms) for s, m in zip(sums, measured, strict=True))

    def check(self, space: SearchSpace, example: torch.Tensor, choices: Sequence[Choice], *,
              anchors: Sequence[Choice] = (), passes: int = CHECK_PASSES) -> LatencyCheck:
        """Predicted against measured latency on ``choices``.

        Every subnet is timed in ``passes`` passes over all of them, keeping its fastest, so
        a moment the machine was slow does not decide a subnet's figure. With ``anchors``
        (the calibration subnets), the table's line is fitted again (as :meth:`rescale`) on
        the anchors' times from the same passes, spread evenly among the checked subnets: the
        speed the predictions follow is the speed of the minute the checked subnets ran in.
        No checked subnet's own time enters its prediction.

        Example:
            >>> check = table.check(space, example, check_choices,
            ...                     anchors=calibration_choices)  # doctest: +SKIP
            >>> check.within(0.10)  # doctest: +SKIP
            0.94
        """
        timed = _spread(list(anchors), list(choices))
        models = [self.deployed(space, choice) for _, choice in timed]
        fastest = self.measure_in_passes(models, example, passes)
        sums = [self.unit_sum(space, model, example) for model in models]
        anchored = [(s, m) for (is_anchor, _), s, m in zip(timed, sums, fastest, strict=True)
                    if is_anchor]
        if anchored:
            self._set_line([s for s, _ in anchored], [m for _, m in anchored])
            logger.info("latency table re-anchored in the check's passes: predicted = %.3f x "
                        "(unit sum + %.4f ms)", self.scale, self.overhead_ms)
        result = LatencyCheck()
        for (is_anchor, _), measured, sum_ms in zip(timed, fastest, sums, strict=True):
            if not is_anchor:
                result.predicted.append(self.scale * (sum_ms + self.overhead_ms))
                result.measured.append(measured)
        self.save()
        return result


def _spread(anchors: list[Choice], choices: list[Choice]) -> list[tuple[bool, Choice]]:
    """``(is_anchor, choice)`` for every anchor and choice, the anchors spread evenly through
    the choices (each list keeps its order).

    Example:
        >>> [a for a, _ in _spread([{"a": 1}, {"a": 2}], [{"c": i} for i in range(4)])]
        [False, True, False, False, True, False]
    """
    placed = [((i + 0.5) / len(anchors), 0, True, c) for i, c in enumerate(anchors)]
    placed += [((i + 0.5) / len(choices), 1, False, c) for i, c in enumerate(choices)]
    return [(is_anchor, choice) for _, _, is_anchor, choice in
            sorted(placed, key=lambda item: (item[0], item[1]))]
