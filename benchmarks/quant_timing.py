"""Timing helpers for ``benchmarks/quant.py``: interleaved rounds, fixed threads.

Every model is timed once per round, round after round (A B C A B C ...), so a burst of load
on the shared machine hits all of them; each (model, batch) keeps the minimum over rounds of
the round's median latency (:func:`sconce.metrics.timing.time_call`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from sconce.metrics.timing import TimingSettings, time_call


def interleaved_latency(
    calls: Mapping[str, Mapping[int, Callable[[], Any]]],
    *,
    threads: int,
    rounds: int,
    seconds: float,
) -> dict[str, dict[int, float]]:
    """``{name: {batch: ms per call}}``: min over ``rounds`` of each round's median.

    Args:
        calls: ``{name: {batch size: zero-argument call}}``.
        threads: torch threads (and ONNX Runtime intra-op threads) while timing.
        rounds: interleaved rounds.
        seconds: length of one (model, batch) measurement in a round.
    """
    settings = TimingSettings(threads=threads, rounds=1, round_seconds=seconds,
                              warmup_seconds=min(0.2, seconds), min_calls=3)
    best: dict[str, dict[int, float]] = {name: {} for name in calls}
    for _ in range(rounds):
        for name, by_batch in calls.items():
            for batch, call in by_batch.items():
                ms = time_call(call, torch.device("cpu"), settings)
                best[name][batch] = min(best[name].get(batch, float("inf")), ms)
    return best


