"""``sconce_nas.search``: architecture search from Python, without a pipeline around it.

Example:
    >>> import sconce_nas
    >>> result = sconce_nas.search("fashion-mnist", {"target_latency": "0.3ms"},
    ...                            supernet_epochs=2, trials=100)  # doctest: +SKIP
    >>> result.save("nas-out/")  # doctest: +SKIP
    >>> sconce.load("nas-out/")  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sconce.api import get_data
from sconce.context import Context
from sconce.data import Data
from sconce.metrics.timing import TimingSettings
from sconce.recipe import Constraints
from sconce.runtime import resolve_device, seed_everything
from sconce_nas.config import NASConfig
from sconce_nas.run import NASResult, run_nas

logger = logging.getLogger(__name__)


def search(
    data: Data | Mapping[str, Any] | str,
    constraints: Constraints | Mapping[str, Any] | None = None,
    *,
    reference: nn.Module | None = None,
    finetune_epochs: float = 1.0,
    finetune_lr: float = 1e-3,
    device: str | torch.device = "auto",
    seed: int = 0,
    work_dir: str | Path | None = None,
    timing: TimingSettings | None = None,
    progress: bool = True,
    **options: Any,
) -> NASResult:
    """Find the most accurate subnet that meets ``constraints``: train a supernet, search it,
    fine-tune the choice.

    Args:
        data: a :class:`sconce.Data`, a dict of loaders, or a registered dataset name.
        constraints: ``target_latency`` (ms or ``"2x"``), ``target_macs``,
            ``target_size_mib`` (a :class:`sconce.Constraints` or a dict); ``target_params``
            and the same names can also be given as options.
        reference: the model ratio targets are relative to (needed for ``"2x"``).
        finetune_epochs: fine-tuning budget of the chosen subnet (0 turns it off).
        finetune_lr: its learning rate.
        device: where training runs ("auto", "cpu", "cuda"); latency is timed on the CPU.
        seed: seeds training and the search.
        work_dir: keeps the supernet, its checkpoints and the latency table between calls
            (default: a temporary folder).
        timing: thread count of the latency table.
        progress: progress bars while training.
        **options: :class:`~sconce_nas.config.NASConfig` fields (``supernet_epochs``,
            ``trials``, ``workers``, ``ray_address``, ``space``, ``target_params``, ...).

    Returns:
        A :class:`NASResult`: ``model``, ``chosen``, ``search`` (the Pareto front), ``save()``.

    Raises:
        sconce_nas.InfeasibleConstraint: a limit below the smallest subnet of the space.
    """
    resolved = get_data(data)
    config = NASConfig.from_dict(options)
    seed_everything(seed)
    ctx = Context(
        data=resolved, device=resolve_device(device), seed=seed,
        work_dir=Path(work_dir) if work_dir is not None else Path(
            tempfile.mkdtemp(prefix="sconce-nas-")),
        finetune_epochs=finetune_epochs, finetune_lr=finetune_lr,
        constraints=Constraints.from_value(constraints), timing=timing or TimingSettings(),
        progress=progress, teacher=reference,
    )
    return run_nas(ctx, config, reference=reference)
