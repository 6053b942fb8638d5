"""Honest wall-clock timing of a model's forward pass, on CPU or CUDA.

Fixed thread count, warm-up, rounds of repeated calls; each round's median, and the minimum
over rounds (the least disturbed round on a shared machine). CUDA is synchronised around each
call and never touched when the model runs on the CPU.

Example:
    >>> import torch
    >>> from torch import nn
    >>> settings = TimingSettings(rounds=2, round_seconds=0.01, warmup_seconds=0.01)
    >>> ms = time_call(lambda: nn.Linear(8, 8)(torch.randn(1, 8)), torch.device("cpu"), settings)
    >>> ms > 0
    True
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch


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
        rounds: rounds of repeated calls; the reported time is the minimum round median.
        round_seconds: each round runs at least this long (and at least ``min_calls`` calls).
        warmup_seconds: untimed calls before the first round.
        min_calls: calls per round, at least.
        batch_size: the throughput batch size.
    """

    threads: int = default_threads()
    rounds: int = 5
    round_seconds: float = 0.2
    warmup_seconds: float = 0.3
    min_calls: int = 3
    batch_size: int = 64


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
    """Milliseconds per ``call()``: minimum over rounds of each round's median.

    Example:
        >>> time_call(lambda: None, torch.device("cpu"), TimingSettings(rounds=1)) >= 0
        True
    """
    synchronize = torch.cuda.synchronize if device.type == "cuda" else _no_op
    with fixed_threads(settings.threads), torch.inference_mode():
        deadline = time.perf_counter() + settings.warmup_seconds
        calls = 0
        while calls < 2 or time.perf_counter() < deadline:
            call()
            calls += 1
        synchronize()
        medians = []
        for _ in range(settings.rounds):
            samples: list[float] = []
            round_end = time.perf_counter() + settings.round_seconds
            while len(samples) < settings.min_calls or time.perf_counter() < round_end:
                start = time.perf_counter()
                call()
                synchronize()
                samples.append(time.perf_counter() - start)
            medians.append(statistics.median(samples))
    return min(medians) * 1e3


def _no_op() -> None:
    return None
