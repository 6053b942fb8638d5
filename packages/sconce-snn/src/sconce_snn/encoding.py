"""Input encodings over time: direct (the same input every step), rate and latency spikes.

Rate and latency codes come from ``snntorch.spikegen``; both read intensities in [0, 1].
Inputs outside that range (standardised images, say) are first mapped into it: from the
``input_range`` given, else each sample's own minimum and maximum.

Example:
    >>> x = torch.tensor([[0.0, 0.5, 1.0]])
    >>> encode(x, "direct", 4).shape
    torch.Size([4, 1, 3])
    >>> encode(x, "latency", 4)[:, 0].sum(0)   # one spike per non-zero feature
    tensor([0., 1., 1.])
"""

from __future__ import annotations

import logging

import torch

from sconce.errors import ConfigError

logger = logging.getLogger(__name__)

ENCODINGS: tuple[str, ...] = ("direct", "rate", "latency")


def to_unit_range(inputs: torch.Tensor, input_range: tuple[float, float] | None = None
                  ) -> torch.Tensor:
    """Map ``inputs`` into [0, 1]: by ``input_range``, else per sample when outside it.

    Example:
        >>> to_unit_range(torch.tensor([[-1.0, 1.0]]))
        tensor([[0., 1.]])
        >>> to_unit_range(torch.tensor([[0.0, 5.0]]), (0.0, 10.0))
        tensor([[0.0000, 0.5000]])
    """
    if input_range is not None:
        low, high = input_range
        return ((inputs - low) / (high - low)).clamp(0.0, 1.0)
    if inputs.numel() == 0 or (inputs.min() >= 0 and inputs.max() <= 1):
        return inputs
    flat = inputs.reshape(inputs.shape[0], -1)
    least = flat.min(dim=1, keepdim=True).values
    span = (flat.max(dim=1, keepdim=True).values - least).clamp_min(1e-12)
    return ((flat - least) / span).reshape(inputs.shape)


def encode(inputs: torch.Tensor, encoding: str, num_steps: int, *,
           input_range: tuple[float, float] | None = None,
           generator_seed: int | None = None) -> torch.Tensor:
    """The input of every time step, time first: ``(num_steps, batch, ...)``.

    Args:
        inputs: one batch, ``(batch, ...)``.
        encoding: ``direct`` (a view repeating the input; no copy), ``rate`` (Bernoulli spikes
            with the intensity as probability) or ``latency`` (one spike per feature, earlier
            for brighter ones; linear code over the whole window, features below 1% silent).
        num_steps: time steps.
        input_range: the range of raw inputs that maps onto [0, 1] for rate / latency codes.
        generator_seed: draw rate spikes from this seed without touching the global random
            state (evaluation), instead of from the global generator (training).

    Raises:
        ConfigError: an unknown encoding.

    Example:
        >>> spikes = encode(torch.full((2, 3), 0.5), "rate", 8, generator_seed=0)
        >>> spikes.shape, sorted(spikes.unique().tolist())
        (torch.Size([8, 2, 3]), [0.0, 1.0])
    """
    if encoding == "direct":
        return inputs.unsqueeze(0).expand(num_steps, *inputs.shape)
    from snntorch import spikegen

    if encoding == "rate":
        unit = to_unit_range(inputs, input_range)
        if generator_seed is None:
            return spikegen.rate(unit, num_steps=num_steps)
        devices = [unit.device.index or 0] if unit.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(generator_seed)
            return spikegen.rate(unit, num_steps=num_steps)
    if encoding == "latency":
        unit = to_unit_range(inputs, input_range)
        return spikegen.latency(unit, num_steps=num_steps, normalize=True, linear=True,
                                clip=True)
    raise ConfigError(f"unknown encoding {encoding!r}; use one of {', '.join(ENCODINGS)}")
