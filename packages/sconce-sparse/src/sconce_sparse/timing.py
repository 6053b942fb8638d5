"""Measuring layers where they run: their real input shapes, formats timed interleaved.

:func:`input_shapes` runs the model once per batch size with forward hooks on the layers of
interest and records the shape of what each receives. :func:`interleaved_times` then times
zero-argument calls (one per format) round after round, in a rotating order, so each round
holds one time per format taken within moments of the others: a burst of load on a shared
machine lands on all of them. Threads are fixed for the whole measurement.

Example:
    >>> import torch
    >>> from torch import nn
    >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    >>> input_shapes(model, ["0", "2"], torch.randn(3, 4), lambda m, x: m(x))
    {'0': (3, 4), '2': (3, 8)}
    >>> times = interleaved_times({"a": lambda: None, "b": lambda: None}, rounds=3,
    ...                           round_seconds=0.001, threads=1)
    >>> sorted(times), len(times["a"])
    (['a', 'b'], 3)
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from sconce.metrics.timing import fixed_threads

logger = logging.getLogger(__name__)

__all__ = ["input_shapes", "interleaved_times"]


def input_shapes(model: nn.Module, names: Sequence[str], inputs: Any,
                 forward: Callable[[nn.Module, Any], Any]) -> dict[str, tuple[int, ...]]:
    """The shape of the first positional input each named module receives on ``inputs``.

    Modules the forward pass never calls are missing from the result.
    """
    shapes: dict[str, tuple[int, ...]] = {}
    handles = []
    modules = dict(model.named_modules())

    def recorder(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
            if name not in shapes and args and isinstance(args[0], torch.Tensor):
                shapes[name] = tuple(args[0].shape)
        return hook

    for name in names:
        handles.append(modules[name].register_forward_pre_hook(recorder(name)))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            forward(model, inputs)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return shapes


def _round_median(call: Callable[[], Any], seconds: float, min_calls: int,
                  synchronize: Callable[[], None]) -> float:
    samples: list[float] = []
    end = time.perf_counter() + seconds
    while len(samples) < min_calls or time.perf_counter() < end:
        start = time.perf_counter()
        call()
        synchronize()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1e3


def _no_sync() -> None:
    """Nothing to wait for on the CPU."""


def interleaved_times(calls: Mapping[str, Callable[[], Any]], *, rounds: int = 5,
                      round_seconds: float = 0.02, min_calls: int = 3, threads: int = 1,
                      device: torch.device | None = None) -> dict[str, list[float]]:
    """Milliseconds per call of each entry, one median per round, formats interleaved.

    Every call runs twice untimed first (kernels are built and caches warmed); each round
    then times every call for ``round_seconds`` (at least ``min_calls`` times) and keeps
    the median, starting each round with a different call.
    """
    names = list(calls)
    synchronize: Callable[[], None] = _no_sync
    if device is not None and device.type == "cuda":
        synchronize = torch.cuda.synchronize
    times: dict[str, list[float]] = {name: [] for name in names}
    with fixed_threads(threads), torch.inference_mode():
        for name in names:
            calls[name]()
            calls[name]()
        synchronize()
        for index in range(rounds):
            shift = index % len(names)
            for name in names[shift:] + names[:shift]:
                times[name].append(_round_median(calls[name], round_seconds, min_calls,
                                                 synchronize))
    return times
