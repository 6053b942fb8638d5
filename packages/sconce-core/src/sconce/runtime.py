"""Devices and seeds.

Example:
    >>> resolve_device("cpu")
    device(type='cpu')
"""

from __future__ import annotations

import random

import numpy as np
import torch

from sconce.errors import ConfigError


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``"auto"`` (or None) means CUDA when available, else CPU; other values are checked.

    Example:
        >>> resolve_device("auto").type in ("cpu", "cuda")
        True
    """
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"device {device!r} is not a torch device ({exc}); use cpu, cuda "
                          "or auto") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} asked for, but this torch sees no CUDA device; "
                          "use --device cpu or auto")
    return resolved


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) for a reproducible run.

    Example:
        >>> seed_everything(0); a = torch.rand(1); seed_everything(0); bool(a == torch.rand(1))
        True
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def model_device(model: torch.nn.Module, default: torch.device) -> torch.device:
    """The device of the model's first tensor, or ``default`` for a model with none.

    Example:
        >>> model_device(torch.nn.ReLU(), torch.device("cpu"))
        device(type='cpu')
    """
    for param in model.parameters():
        return param.device
    for buffer in model.buffers():
        return buffer.device
    return default
