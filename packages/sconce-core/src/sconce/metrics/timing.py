"""Honest wall-clock timing of forward passes, on CPU or CUDA, several models compared together.

:func:`time_interleaved` times several calls (the original model and its compressed versions)
together: after a warm-up that really warms (each call's first run, where oneDNN creates its
primitives and ONNX Runtime builds its session, is excluded; then every call runs until its
times settle), round after round each call runs for ``round_seconds`` in turn, the order
rotating every round, so a burst of load on a shared machine lands on all of them alike.
Each call's time is the median of its round medians. A round where any call's median is far
from that call's median over all rounds (a disturbed round) is left out and another is
measured; rounds continue until there are ``rounds`` undisturbed ones and every ratio to the
first call is stable within ``tolerance``, or ``max_rounds`` is reached (then the ``rounds``
least disturbed rounds count, never one or two lucky ones). The result
says how stable each ratio was and how much of its threads' CPU time the process got
(a value well under 100% means another process was competing for the cores).

Fixed thread count throughout, with one exception that prevents 100x errors: on a busy
machine (other processes' threads ready to run would leave ``threads`` threads no free
cores, or ``threads`` threads measured more than twice as slow as one on the first call)
multi-threaded PyTorch stalls at every parallel region waiting
for a descheduled worker thread (a tiny CNN measured 0.5 ms in one round and 350 ms in the
next), so the calls are timed with one thread instead and the result says so. CUDA is
synchronised around each call and never touched when the model runs on the CPU.

Example:
    >>> import torch
    >>> from torch import nn
    >>> settings = TimingSettings(rounds=2, round_seconds=0.01, warmup_seconds=0.01)
    >>> small, large = nn.Linear(8, 8), nn.Linear(512, 512)
    >>> x, y = torch.randn(1, 8), torch.randn(1, 512)
    >>> timed = time_interleaved([lambda: small(x), lambda: large(y)], torch.device("cpu"),
    ...                          settings)
    >>> [t.ms > 0 for t in timed], timed[0].ratio
    ([True, True], 1.0)
"""

from __future__ import annotations

import logging
import os
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

logger = logging.getLogger(__name__)


def default_threads() -> int:
    """The thread count timings use unless told otherwise: the CPUs this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class TimingSettings:
    """How latency is timed.

    Attributes:
        threads: ``torch.set_num_threads`` during timing.
        rounds: timed rounds, at least (disturbed rounds are measured again).
        round_seconds: each call runs at least this long per round (and ``min_calls`` times).
        warmup_seconds: untimed calls before the first round, per call, at least.
        min_calls: calls per round, at least.
        batch_size: the throughput batch size.
        max_rounds: rounds at most, re-measured ones included.
        tolerance: rounds continue until each ratio's spread (half the interquartile range
            of the per-round ratios, relative to the ratio) is within this fraction.
        outlier: a round whose median is more than this factor away from the call's median
            over rounds is disturbed, and measured again.
    """

    threads: int = default_threads()
    rounds: int = 5
    round_seconds: float = 0.2
    warmup_seconds: float = 0.3
    min_calls: int = 3
    batch_size: int = 64
    max_rounds: int = 15
    tolerance: float = 0.03
    outlier: float = 1.3


@dataclass
class Timed:
    """One call's timing, compared with the first call of the same :func:`time_interleaved`.

    Attributes:
        ms: milliseconds per call: the median of the kept rounds' medians.
        rounds: each kept round's median, in milliseconds.
        ratio: the first call's ``ms`` over this one's (> 1: this one is faster), as in the
            report's table.
        spread: half the interquartile range of the per-round ratios (each round's pair
            timed back to back), relative to their median.
        remeasured: disturbed rounds that were measured again.
        cpu_share: the process's CPU time over (wall time x threads) while timing.
        threads: the thread count timed with; ``busy`` says why it is not the one asked for.
        contended: the share was low (< 90%) while other processes' threads were runnable.

    Example:
        >>> Timed(ms=2.0, rounds=[2.0], ratio=1.0).describe()
        '1.00x, stable within ±0.0% over 1 round(s)'
    """

    ms: float
    rounds: list[float] = field(default_factory=list)
    ratio: float = 1.0
    spread: float = 0.0
    remeasured: int = 0
    cpu_share: float = 1.0
    threads: int = 0
    busy: str = ""
    contended: bool = False

    def describe(self) -> str:
        """The ratio and how stable it was, in words."""
        text = (f"{self.ratio:.2f}x, stable within ±{100 * self.spread:.1f}% over "
                f"{len(self.rounds)} round(s)")
        if self.remeasured:
            text += f", {self.remeasured} disturbed round(s) measured again"
        if self.busy:
            text += f"; timed with {self.threads} thread(s): {self.busy}"
        if self.contended:
            text += (f"; the process got {100 * self.cpu_share:.0f}% of its threads' CPU time "
                     "(another process was using the cores)")
        return text


@contextmanager
def fixed_threads(threads: int) -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(threads)``, restoring the old value after.

    Example:
        >>> with fixed_threads(1):
        ...     torch.get_num_threads()
        1
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def time_call(call: Callable[[], object], device: torch.device, settings: TimingSettings) -> float:
    """Milliseconds per ``call()``, timed alone (:func:`time_interleaved` with one call).

    Example:
        >>> time_call(lambda: None, torch.device("cpu"), TimingSettings(rounds=1)) >= 0
        True
    """
    return time_interleaved([call], device, settings)[0].ms


def time_interleaved(calls: Sequence[Callable[[], object]], device: torch.device,
                     settings: TimingSettings) -> list[Timed]:
    """Time ``calls`` together, interleaved round by round; ratios are to ``calls[0]``.

    See the module docstring for the procedure.
    """
    synchronize = torch.cuda.synchronize if device.type == "cuda" else _no_op
    threads, busy = settings.threads, ""
    if device.type == "cpu" and threads > 1:
        threads, busy = _busy_threads(calls[0], synchronize, settings)
    with fixed_threads(threads), torch.inference_mode():
        for call in calls:  # first-call initialisation, excluded
            call()
        synchronize()
        for call in calls:
            _warm_up(call, synchronize, settings)
        wall, cpu = time.perf_counter(), time.process_time()
        measured: list[list[float]] = []
        for index in range(max(settings.rounds, settings.max_rounds)):
            order = list(range(len(calls)))
            shift = index % len(calls)
            order = order[shift:] + order[:shift]
            medians = [0.0] * len(calls)
            for position in order:
                medians[position] = _round(calls[position], synchronize, settings)
            measured.append(medians)
            if len(measured) >= settings.rounds:
                clean = _drop_disturbed(measured, settings.outlier)
                if len(clean) >= settings.rounds and _stable(clean, settings.tolerance):
                    break
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    share = min(1.0, cpu / max(1e-9, wall * threads)) if device.type == "cpu" else 1.0
    # a low share alone may be single-threaded kernels; only other runnable threads show a
    # competing process
    contended = share < 0.9 and (_runnable_others() or 0) > 0
    kept = _least_disturbed(measured, settings.outlier, settings.rounds)
    remeasured = len(measured) - len(kept)
    results = [_summary(kept, position, remeasured, share) for position in range(len(calls))]
    for result in results:
        result.threads, result.busy, result.contended = threads, busy, contended
    if share < 0.7 and contended:
        logger.info("timing got %.0f%% of its %d thread(s)' CPU time: another process is "
                       "using the cores, so absolute latencies are inflated (ratios are "
                       "compared round by round)", 100 * share, threads)
    return results


def _busy_threads(call: Callable[[], object], synchronize: Callable[[], object],
                  settings: TimingSettings) -> tuple[int, str]:
    """``(threads to time with, why not settings.threads)``: one thread on a busy machine."""
    cpus = default_threads()
    others = _runnable_others()
    if others is not None and others + settings.threads > cpus + 1:
        return 1, (f"the machine was busy ({others:g} other thread(s) running on {cpus} "
                   "CPUs)")
    probe = TimingSettings(threads=1, rounds=1, round_seconds=settings.warmup_seconds / 3,
                           min_calls=settings.min_calls)
    with torch.inference_mode():
        call()
        timed: dict[int, float] = {}
        for threads in (settings.threads, 1, settings.threads):
            with fixed_threads(threads):
                _round(call, synchronize, probe)  # settle the pool at this size
                timed[threads] = min(timed.get(threads, float("inf")),
                                     _round(call, synchronize, probe))
    if timed[settings.threads] > 2 * timed[1]:
        return 1, (f"{settings.threads} threads measured {timed[settings.threads] * 1e3:.3g} ms "
                   f"against {timed[1] * 1e3:.3g} ms for one (the cores were contended)")
    return settings.threads, ""


def _warm_up(call: Callable[[], object], synchronize: Callable[[], object],
             settings: TimingSettings) -> None:
    """Run ``call`` for ``warmup_seconds`` and ``min_calls`` times, then until two successive
    batches of calls agree within 10% (caches, allocators and thread pools settled)."""
    deadline = time.perf_counter() + settings.warmup_seconds
    calls = 0
    while calls < settings.min_calls or time.perf_counter() < deadline:
        call()
        calls += 1
    synchronize()
    previous = _round(call, synchronize, settings, seconds=settings.warmup_seconds / 3)
    for _ in range(5):
        current = _round(call, synchronize, settings, seconds=settings.warmup_seconds / 3)
        if abs(current - previous) <= 0.1 * max(current, previous):
            return
        previous = current


def _runnable_others(samples: int = 5) -> float | None:
    """Threads of other processes running or ready to run now (state R in ``/proc``; the
    median of a few samples: unlike the load average it does not lag), or None off Linux."""
    if not os.path.isdir("/proc/self/task"):
        return None
    counts = []
    for _ in range(samples):
        counts.append(_running_threads_elsewhere())
        time.sleep(0.01)
    return float(statistics.median(counts))


def _running_threads_elsewhere() -> int:
    mine, count = str(os.getpid()), 0
    for process in os.scandir("/proc"):
        if not process.name.isdigit() or process.name == mine:
            continue
        try:
            for task in os.scandir(f"/proc/{process.name}/task"):
                with open(f"{task.path}/stat", encoding="ascii", errors="replace") as handle:
                    count += handle.read().rpartition(")")[2].split()[0] == "R"
        except OSError:  # the process ended meanwhile
            continue
    return count


def _round(call: Callable[[], object], synchronize: Callable[[], object],
           settings: TimingSettings, seconds: float | None = None) -> float:
    """The median seconds of one round of calls."""
    samples: list[float] = []
    round_end = time.perf_counter() + (settings.round_seconds if seconds is None else seconds)
    while len(samples) < settings.min_calls or time.perf_counter() < round_end:
        start = time.perf_counter()
        call()
        synchronize()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def _deviation(medians: list[float], typical: list[float]) -> float:
    """How far a round strays: the largest factor between a call's median and its typical."""
    return max(max(v / t, t / v) if v > 0 and t > 0 else float("inf")
               for v, t in zip(medians, typical, strict=True))


def _typical(rounds: list[list[float]]) -> list[float]:
    return [statistics.median(r[i] for r in rounds) for i in range(len(rounds[0]))]


def _drop_disturbed(rounds: list[list[float]], factor: float) -> list[list[float]]:
    """The rounds in which no call's median is more than ``factor`` away from its median
    over all ``rounds``."""
    typical = _typical(rounds)
    return [r for r in rounds if _deviation(r, typical) <= factor]


def _least_disturbed(rounds: list[list[float]], factor: float, keep: int) -> list[list[float]]:
    """The undisturbed rounds, or (when fewer than ``keep`` are) the ``keep`` rounds that
    stray least: a figure never rests on one or two lucky rounds."""
    typical = _typical(rounds)
    deviations = [_deviation(r, typical) for r in rounds]
    clean = [r for r, d in zip(rounds, deviations, strict=True) if d <= factor]
    if len(clean) >= min(keep, len(rounds)):
        return clean
    ranked = sorted(range(len(rounds)), key=deviations.__getitem__)
    return [rounds[i] for i in ranked[:keep]]


def _ratios(rounds: list[list[float]], position: int) -> list[float]:
    return [r[0] / r[position] if r[position] > 0 else 1.0 for r in rounds]


def _spread(values: list[float]) -> float:
    if len(values) < 2:
        return 0.0
    quartiles = statistics.quantiles(values, n=4, method="inclusive")
    centre = statistics.median(values)
    return (quartiles[2] - quartiles[0]) / 2 / centre if centre > 0 else 0.0


def _stable(rounds: list[list[float]], tolerance: float) -> bool:
    return all(_spread(_ratios(rounds, i)) <= tolerance for i in range(1, len(rounds[0])))


def _summary(rounds: list[list[float]], position: int, remeasured: int, share: float) -> Timed:
    mine = [r[position] * 1e3 for r in rounds]
    ms = statistics.median(mine)
    first = statistics.median(r[0] * 1e3 for r in rounds)
    return Timed(ms=ms, rounds=mine, ratio=first / ms if ms > 0 else 1.0,
                 spread=_spread(_ratios(rounds, position)), remeasured=remeasured,
                 cpu_share=share)


def _no_op() -> None:
    return None
