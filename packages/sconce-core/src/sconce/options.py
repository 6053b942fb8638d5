"""The options of :func:`sconce.compress`, in one typed, validated place.

``sconce.compress(model, data, recipe, constraints, **options)`` and a recipe file's
``[options]`` table both go through :class:`CompressOptions`: an unknown name is a one-line
:class:`~sconce.errors.ConfigError` with the closest known name, and every value is checked
before any work is done. Options given to ``compress`` override the recipe file's.

Example:
    >>> CompressOptions.from_dict({"finetune_epochs": 2}).finetune_epochs
    2.0
    >>> CompressOptions.from_dict({"finetune_epoch": 2})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    sconce.errors.ConfigError: compress() has no option 'finetune_epoch'; did you mean ...?
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from sconce.adapter import ModelAdapter
from sconce.config import Config, check_positive
from sconce.errors import ConfigError
from sconce.metrics.base import Metric
from sconce.metrics.timing import TimingSettings

__all__ = ["CompressOptions"]


@dataclass
class CompressOptions(Config):
    """Everything :func:`sconce.compress` takes besides the model, data, recipe and constraints.

    Attributes:
        finetune_epochs: fine-tuning budget per ``prune`` / ``sparsify`` / ``search`` stage
            (0 turns fine-tuning off).
        finetune_lr: fine-tuning learning rate.
        distill: distil from the original model while fine-tuning (it is loaded on demand and
            released after each stage).
        device: ``"auto"`` (CUDA when present), ``"cpu"`` or ``"cuda"``.
        seed: seeds everything, for a reproducible run.
        out: save the model, ``report.json``, ``report.md`` and plots here.
        work_dir: per-stage checkpoints (default ``<out>/work``, or a temporary folder).
        resume: reuse the finished stages found in ``work_dir``.
        metrics: metric names (or Metric objects) to report; None: every default metric.
        adapter: how to run the model; None: from the plugins, else a classifier.
        timing: latency settings; None: the defaults.
        progress: progress bars for fine-tuning.

    Example:
        >>> CompressOptions(device="cpu", seed=3).seed
        3
    """

    finetune_epochs: float = 1.0
    finetune_lr: float = 1e-3
    distill: bool = True
    device: str | torch.device = "auto"
    seed: int = 0
    out: str | Path | None = None
    work_dir: str | Path | None = None
    resume: bool = False
    metrics: Sequence[str | Metric] | None = None
    adapter: ModelAdapter | None = None
    timing: TimingSettings | None = None
    progress: bool = True

    @classmethod
    def unknown_field_message(cls, key: str, hint: str) -> str:
        return f"compress() has no option {key!r}; {hint}"

    def validate(self) -> None:
        super().validate()
        check_positive("finetune_epochs", self.finetune_epochs, allow_zero=True)
        check_positive("finetune_lr", self.finetune_lr)
        for name in ("distill", "resume", "progress"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ConfigError(f"seed must be an integer, got {self.seed!r}")
        if not isinstance(self.device, (str, torch.device)):
            raise ConfigError(f"device must be 'auto', 'cpu', 'cuda' or a torch.device, "
                              f"got {self.device!r}")
        for name in ("out", "work_dir"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, (str, Path)):
                raise ConfigError(f"{name} must be a folder path, got {value!r}")
        if self.metrics is not None and (isinstance(self.metrics, str) or not all(
                isinstance(m, (str, Metric)) for m in self.metrics)):
            raise ConfigError(f"metrics must be a list of metric names, got {self.metrics!r}")
        if self.adapter is not None and not isinstance(self.adapter, ModelAdapter):
            raise ConfigError(f"adapter must be a sconce.ModelAdapter, got {self.adapter!r}")
        if self.timing is not None and not isinstance(self.timing, TimingSettings):
            raise ConfigError(f"timing must be a sconce.TimingSettings, got {self.timing!r}")
