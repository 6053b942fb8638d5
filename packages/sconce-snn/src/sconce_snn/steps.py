"""Accuracy of a spiking network as a function of its number of time steps, in one run.

A network run for ``T`` steps computes, in its first ``t`` steps, exactly what it would
compute if run for ``t`` steps (nothing looks ahead), so one run of the longest window gives
the accuracy of every shorter one: the class scores after ``t`` steps are the spike counts
(or the running maximum of the membrane) up to step ``t``. This holds for ``direct`` and
``rate`` encodings (a shorter rate code is the prefix of a longer one from the same seed),
not for ``latency`` codes, whose spike times are spread over the whole window.

Example:
    >>> import snntorch as snn
    >>> from torch import nn
    >>> from sconce_snn.adapter import SpikingAdapter
    >>> model = nn.Sequential(nn.Linear(2, 2), snn.Leaky(beta=0.5, init_hidden=True))
    >>> batches = [(torch.randn(4, 2), torch.tensor([0, 1, 0, 1]))]
    >>> sorted(accuracy_by_steps(model, batches, SpikingAdapter(), (1, 5)))
    [1, 5]
"""

from __future__ import annotations

import dataclasses
import io
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sconce.errors import ConfigError, DataError
from sconce.runtime import model_device
from sconce.storage import atomic_write_bytes
from sconce_snn.adapter import SpikeRecord, SpikingAdapter

logger = logging.getLogger(__name__)


def accuracy_by_steps(model: nn.Module, batches: Iterable[Any], adapter: SpikingAdapter,
                      steps: Sequence[int], *, max_samples: int | None = None
                      ) -> dict[int, float]:
    """``{t: accuracy in percent after t time steps}`` from one run of ``max(steps)`` steps.

    Raises:
        ConfigError: ``steps`` is empty or holds a non-positive count.
        DataError: the batches hold no labelled sample.

    Example:
        >>> import snntorch as snn
        >>> net = nn.Sequential(nn.Linear(2, 2), snn.Leaky(beta=0.5, init_hidden=True))
        >>> accuracy_by_steps(net, [(torch.ones(3, 2), torch.zeros(3, dtype=torch.long))],
        ...                   SpikingAdapter(), (1, 10)).keys()
        dict_keys([1, 10])
    """
    if not steps or any(int(t) < 1 for t in steps):
        raise ConfigError(f"steps must be positive time-step counts, got {list(steps)!r}")
    if adapter.encoding == "latency":
        raise ConfigError("accuracy by time steps from one run needs a 'direct' or 'rate' "
                          "encoding; a latency code depends on the window length")
    window = dataclasses.replace(adapter, num_steps=max(int(t) for t in steps))
    device = model_device(model, torch.device("cpu"))
    correct = dict.fromkeys((int(t) for t in steps), 0)
    total = 0
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for batch in batches:
                inputs, targets = window.split_batch(batch)
                if targets is None:
                    raise DataError("accuracy needs labelled data; this loader yields no "
                                    "targets")
                record = window.forward(model, window.to_device(inputs, device))
                running = _running_scores(record, window)
                targets = targets.to(device)
                for t in correct:
                    correct[t] += int((running[t - 1].argmax(dim=-1) == targets).sum())
                total += int(targets.numel())
                if max_samples is not None and total >= max_samples:
                    break
    finally:
        model.train(was_training)
    if total == 0:
        raise DataError("no labelled sample to measure accuracy on")
    return {t: 100.0 * count / total for t, count in sorted(correct.items())}


def _running_scores(record: Any, adapter: SpikingAdapter) -> torch.Tensor:
    """Class scores after each time step, time first."""
    if not isinstance(record, SpikeRecord):  # a network that does not spike: constant
        scores = adapter.logits(record)
        return scores.unsqueeze(0).expand(adapter.num_steps, *scores.shape)
    if adapter.readout == "spikes":
        return record.spikes.cumsum(dim=0)
    if record.membrane is None:
        return adapter.logits(record)  # raises the adapter's clear error
    return record.membrane.cummax(dim=0).values


def plot_accuracy_by_steps(curve: dict[int, float], path: str | Path, *,
                           reference: float | None = None, title: str = "") -> Path:
    """Write a PNG of accuracy against time steps (and a reference line, the ANN's).

    Draws on its own figure; the global matplotlib backend is left alone.

    Example:
        >>> plot_accuracy_by_steps({10: 80.0, 100: 90.0}, "curve.png")  # doctest: +SKIP
        PosixPath('curve.png')
    """
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5.0, 3.4))
    axis = figure.add_subplot()
    steps = sorted(curve)
    axis.plot(steps, [curve[t] for t in steps], marker="o", label="SNN")
    if reference is not None:
        axis.axhline(reference, linestyle="--", color="grey", label="ANN")
    axis.set_xscale("log")
    axis.set_xlabel("time steps")
    axis.set_ylabel("accuracy (%)")
    axis.set_title(title or "accuracy vs time steps", fontsize=10)
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    path = Path(path)
    atomic_write_bytes(path, buffer.getvalue())
    return path
