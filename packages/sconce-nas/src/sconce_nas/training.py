"""Supernet training with the sandwich rule and in-place distillation, in the core's loop.

Every training step runs the largest member, the smallest member and ``random_subnets``
random members on the same batch (the sandwich rule); the largest learns from the labels,
every other member from the largest's softened predictions (in-place distillation), and
one backward pass updates the shared weights. It all happens in one forward call of
:class:`SandwichRule`, so :func:`sconce.train` runs it like any model: with its optimizer
and schedule, its checkpoints and ``resume``, and under ``torchrun`` with
DistributedDataParallel (the largest member uses every shared tensor, so no parameter is
ever unused). Members are drawn from a seed, the step count (a buffer saved in every
checkpoint) and the rank, so a resumed run draws what the uninterrupted one would have.

Example:
    >>> import torch
    >>> from sconce_nas.elastic import ElasticCNN
    >>> space = ElasticCNN(in_channels=1, image_size=8, num_classes=2, stages=((8, 2),))
    >>> rule = SandwichRule(Supernet(space), random_subnets=1).train()
    >>> rule(torch.randn(4, 1, 8, 8)).shape   # (members, batch, classes)
    torch.Size([3, 4, 2])
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sconce import distributed
from sconce.adapter import ClassifierAdapter
from sconce.data import Data
from sconce.storage import atomic_torch_save, atomic_write_json
from sconce.train import fit
from sconce_nas.space import SearchSpace, space_from_record
from sconce_nas.supernet import Supernet

logger = logging.getLogger(__name__)

SUPERNET_WEIGHTS = "supernet.pt"
SUPERNET_DESCRIPTION = "supernet.json"


class SandwichRule(nn.Module):
    """Wraps a supernet for :func:`sconce.train`: a training forward returns the logits of the
    largest, the smallest and ``random_subnets`` random members, stacked; in eval mode it
    returns the largest member's logits.

    Args:
        supernet: the shared weights.
        random_subnets: random members per step besides the largest and the smallest.
        seed: seeds the draws (with the step count and the rank).
    """

    steps: torch.Tensor

    def __init__(self, supernet: Supernet, random_subnets: int = 2, seed: int = 0) -> None:
        super().__init__()
        self.supernet = supernet
        self.random_subnets = random_subnets
        self.seed = seed
        self.register_buffer("steps", torch.zeros((), dtype=torch.int64))

    def forward(self, x: Any) -> torch.Tensor:
        """Stacked member logits ``(members, batch, classes)`` in training, else the largest's."""
        if not self.training:
            return self.supernet(x)
        space = self.supernet.space
        rng = random.Random(f"{self.seed}:{int(self.steps)}:{distributed.rank()}")
        members = [space.largest(), space.smallest(),
                   *(space.sample(rng) for _ in range(self.random_subnets))]
        self.steps += 1
        return torch.stack([self.supernet.forward_subnet(m, x) for m in members])


class InplaceDistillation(nn.Module):
    """The sandwich loss: cross-entropy for the largest member (first), and for every other
    member the KL divergence from the largest's predictions (detached), summed.

    Example:
        >>> logits = torch.zeros(3, 2, 4)
        >>> float(InplaceDistillation()(logits, torch.tensor([0, 1])))  # doctest: +ELLIPSIS
        1.386...
    """

    def __init__(self, temperature: float = 1.0, label_smoothing: float = 0.1) -> None:
        super().__init__()
        self.temperature = temperature
        self.label_smoothing = label_smoothing

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The summed loss of all members."""
        loss = F.cross_entropy(logits[0], targets, label_smoothing=self.label_smoothing)
        t = self.temperature
        teacher = F.softmax(logits[0].detach() / t, dim=-1)
        for student in logits[1:]:
            loss = loss + F.kl_div(F.log_softmax(student / t, dim=-1), teacher,
                                   reduction="batchmean") * t * t
        return loss


def fingerprint(space: SearchSpace, data: Data, settings: Mapping[str, Any]) -> str:
    """A short hash of what a trained supernet depends on (space, data, training settings).

    Example:
        >>> from sconce_nas.elastic import ElasticCNN
        >>> len(fingerprint(ElasticCNN(), data, {"epochs": 1}))  # doctest: +SKIP
        16
    """
    train_size = len(data.train.dataset) if data.train is not None else 0  # type: ignore[arg-type]
    text = json.dumps({"family": space.family, "space": space.spec(), "data": data.name,
                       "train_size": train_size, **settings}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def save_supernet(supernet: Supernet, folder: str | Path, info: Mapping[str, Any] | None = None
                  ) -> Path:
    """Write ``supernet.pt`` (weights) and ``supernet.json`` (family, space, ``info``).

    Example:
        >>> folder = save_supernet(supernet, "out/supernet")  # doctest: +SKIP
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_torch_save(folder / SUPERNET_WEIGHTS, supernet.state_dict())
    atomic_write_json(folder / SUPERNET_DESCRIPTION, {
        "family": supernet.space.family, "space": supernet.space.spec(), **dict(info or {})})
    return folder


def supernet_info(folder: str | Path) -> dict[str, Any]:
    """The description :func:`save_supernet` wrote (family, space, training settings,
    ``history`` and ``train_seconds``: the wall time of the training call that finished it).

    Example:
        >>> supernet_info("out/supernet")["train_seconds"]  # doctest: +SKIP
        512.3
    """
    info: dict[str, Any] = json.loads((Path(folder) / SUPERNET_DESCRIPTION).read_text("utf-8"))
    return info


def load_supernet(folder: str | Path) -> Supernet:
    """A supernet saved by :func:`save_supernet` (weights loaded with ``weights_only=True``).

    Example:
        >>> supernet = load_supernet("out/supernet")  # doctest: +SKIP
    """
    folder = Path(folder)
    supernet = Supernet(space_from_record(supernet_info(folder)))
    supernet.load_state_dict(torch.load(folder / SUPERNET_WEIGHTS, map_location="cpu",
                                        weights_only=True))
    return supernet.eval()


def train_supernet(
    space: SearchSpace,
    data: Data,
    epochs: float,
    *,
    lr: float = 3e-3,
    random_subnets: int = 2,
    seed: int = 0,
    device: str | torch.device = "auto",
    progress: bool = True,
    folder: str | Path | None = None,
    max_grad_norm: float | None = 5.0,
) -> Supernet:
    """Train a supernet of ``space`` with the sandwich rule through :func:`sconce.train`.

    Args:
        space: the family.
        data: its training split is used.
        epochs: passes over the training set.
        lr: AdamW learning rate (cosine schedule with warm-up, per step).
        random_subnets: random members per step besides the largest and the smallest.
        seed: seeds initialisation, data order and member draws.
        device: where to train.
        progress: progress bars.
        folder: keeps per-epoch checkpoints (a run restarted with the same folder resumes)
            and the finished supernet (a later call with the same folder and settings loads
            it instead of training).
        max_grad_norm: gradient clipping.

    Returns:
        The trained supernet, on the CPU, in eval mode.
    """
    finished = Path(folder) / SUPERNET_WEIGHTS if folder is not None else None
    if finished is not None and finished.is_file():
        logger.info("reusing the trained supernet in %s", folder)
        return load_supernet(Path(folder))  # type: ignore[arg-type]
    torch.manual_seed(seed)
    supernet = Supernet(space)
    rule = SandwichRule(supernet, random_subnets=random_subnets, seed=seed)
    logger.info("training the supernet of %s for %g epoch(s): largest, smallest and %d random "
                "member(s) per step", space.family, epochs, random_subnets)
    started = time.perf_counter()
    result = fit(rule, data, epochs, lr=lr, criterion=InplaceDistillation(), seed=seed,
                   device=device, progress=progress, checkpoint_dir=folder, resume=True,
                   adapter=ClassifierAdapter(), max_grad_norm=max_grad_norm)
    supernet.cpu().eval()
    if folder is not None and distributed.is_main_process():
        save_supernet(supernet, folder, {"epochs": epochs, "lr": lr, "seed": seed,
                                         "random_subnets": random_subnets,
                                         "history": result.history,
                                         "train_seconds": time.perf_counter() - started})
    return supernet
