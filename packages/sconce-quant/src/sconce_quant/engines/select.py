"""Pick the int8 engine by measuring: build the model on every engine that works here, check
it computes what the float model computes, time it, keep the fastest.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from sconce_quant.engines import ENGINES, StaticSettings
    >>> model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2)).eval()
    >>> batches = [torch.randn(16, 8) for _ in range(2)]
    >>> chosen, tried = choose_engine(list(ENGINES.values()), model, batches, StaticSettings(),
    ...                               timing_inputs={1: batches[0][:1]})  # doctest: +SKIP
    >>> chosen.engine.name  # doctest: +SKIP
    'onnxruntime'
"""

from __future__ import annotations

import logging
import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from sconce.metrics.timing import TimingSettings, default_threads, time_call
from sconce_quant.engines.base import (
    Built,
    Engine,
    EngineError,
    PreparedModel,
    StaticSettings,
    as_args,
    first_tensor,
)

logger = logging.getLogger(__name__)

# ``auto`` only times engines whose output is about as close to the float model's as the
# closest engine's (within this factor, plus an absolute slack): speed never buys accuracy
ERROR_TOLERANCE = (1.5, 0.01)


@dataclass
class Candidate:
    """One engine tried for a model.

    Attributes:
        engine: the engine.
        prepared: its prepared model (None when it failed).
        built: its int8 model (None when it failed).
        error: why it failed ("" when it worked).
        relative_error: ``||int8 - float|| / ||float||`` of the outputs on a calibration batch.
        latency_ms: milliseconds per call, by batch size.

    Example:
        >>> from sconce_quant.engines import ENGINES
        >>> Candidate(ENGINES["fx"], error="not installed").summary()
        'fx: not installed'
    """

    engine: Engine
    prepared: PreparedModel | None = None
    built: Built | None = None
    error: str = ""
    relative_error: float = math.nan
    latency_ms: dict[int, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Whether the engine built a working model."""
        return self.built is not None and not self.error

    def summary(self) -> str:
        """One line for the report: the timings, or why it failed."""
        if not self.ok:
            return f"{self.engine.name}: {self.error}"
        times = ", ".join(f"{ms / batch:.3g} ms/sample at batch {batch}"
                          for batch, ms in sorted(self.latency_ms.items()))
        return (f"{self.engine.name}: {times or 'not timed'} "
                f"(output error {100 * self.relative_error:.1f}%)")


def relative_error(model: nn.Module, quantized: nn.Module, batch: Any) -> float:
    """``||q(x) - f(x)|| / ||f(x)||`` on the first output tensor.

    Example:
        >>> relative_error(nn.Identity(), nn.Identity(), torch.ones(2))
        0.0
    """
    with torch.no_grad():
        reference = first_tensor(model(*as_args(batch))).float()
        result = first_tensor(quantized(*as_args(batch))).float()
    if result.shape != reference.shape:
        raise EngineError(f"the int8 model returns shape {tuple(result.shape)}, the float "
                          f"model {tuple(reference.shape)}")
    if not torch.isfinite(result).all():
        raise EngineError("the int8 model returns non-finite values")
    return float((result - reference).norm() / reference.norm().clamp_min(1e-12))


def _try(engine: Engine, model: nn.Module, batches: Sequence[Any], settings: StaticSettings,
         skip: Collection[str]) -> Candidate:
    candidate = Candidate(engine)
    reason = engine.unavailable()
    if reason:
        candidate.error = reason
        return candidate
    try:
        candidate.prepared = engine.prepare(model, batches, settings)
        candidate.built = candidate.prepared.build(skip)
        candidate.relative_error = relative_error(model, candidate.built.module, batches[0])
    except EngineError as exc:
        candidate.error = str(exc)
    except Exception as exc:  # an engine's own failure must never break the choice
        logger.info("engine %s failed", engine.name, exc_info=True)
        candidate.error = f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}"
    return candidate


def choose_engine(
    engines: Sequence[Engine],
    model: nn.Module,
    batches: Sequence[Any],
    settings: StaticSettings,
    *,
    skip: Collection[str] = (),
    timing_inputs: dict[int, Any] | None = None,
    threads: int | None = None,
) -> tuple[Candidate, list[Candidate]]:
    """Build ``model`` on each engine and return the fastest working one, and all tried.

    Args:
        engines: the engines to try (one means no timing is needed).
        model: the float model (eval mode; not modified).
        batches: calibration batches.
        settings: calibration and layout.
        skip: layers to keep in float.
        timing_inputs: ``{batch size: inputs}`` to time each engine at; the engine with the
            lowest sum of (its time / the best time) over the batch sizes wins.
        threads: torch threads while timing (default: the CPUs this process may use).

    Raises:
        EngineError: no engine could build a working int8 model (the reasons are listed).

    Example:
        >>> from sconce_quant.engines import ENGINES, StaticSettings
        >>> model = nn.Sequential(nn.Linear(8, 8), nn.ReLU()).eval()
        >>> chosen, tried = choose_engine([ENGINES["fx"]], model, [torch.randn(16, 8)],
        ...                               StaticSettings())
        >>> chosen.engine.name, len(tried)
        ('fx', 1)
    """
    tried = [_try(engine, model, batches, settings, skip) for engine in engines]
    working = [c for c in tried if c.ok]
    if not working:
        raise EngineError("no int8 engine could quantize this model: "
                          + "; ".join(c.summary() for c in tried))
    closest = min(c.relative_error for c in working)
    factor, slack = ERROR_TOLERANCE
    for candidate in working:
        if candidate.relative_error > closest * factor + slack:
            candidate.error = (f"less accurate here (output error "
                               f"{100 * candidate.relative_error:.1f}% vs "
                               f"{100 * closest:.1f}%)")
    working = [c for c in working if c.ok]
    if len(working) > 1 and timing_inputs:
        timing = TimingSettings(threads=threads or default_threads(), rounds=3,
                                round_seconds=0.15, warmup_seconds=0.15, min_calls=3)
        for candidate in working:
            assert candidate.built is not None
            module = candidate.built.module.eval()
            for batch_size, inputs in timing_inputs.items():
                args = as_args(inputs)

                def call(module: nn.Module = module, args: tuple[Any, ...] = args) -> Any:
                    return module(*args)

                candidate.latency_ms[batch_size] = time_call(call, torch.device("cpu"), timing)
        best = {b: min(c.latency_ms[b] for c in working) for b in timing_inputs}
        chosen = min(working, key=lambda c: sum(c.latency_ms[b] / best[b] for b in best))
    else:
        chosen = working[0]
    return chosen, tried
