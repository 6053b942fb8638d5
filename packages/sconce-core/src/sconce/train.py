"""One loop for training and fine-tuning, optionally distilling from a teacher.

:func:`fit` is the loop; :func:`sconce.train` (public) resolves dataset names and the model's
adapter through the plugins and calls it, and ``ctx.finetune`` calls it with the run's
settings. Techniques hook into it through callbacks (for example to keep pruned weights at
zero after every optimizer step). Under ``torchrun`` it trains with DistributedDataParallel.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from torch.utils.data import DataLoader, TensorDataset
    >>> ds = TensorDataset(torch.randn(64, 4), torch.randint(0, 2, (64,)))
    >>> model = nn.Linear(4, 2)
    >>> result = fit(model, {"train": DataLoader(ds, batch_size=16)}, epochs=1, progress=False)
    >>> result.steps
    4
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

from sconce import distributed
from sconce.adapter import ClassifierAdapter, ModelAdapter
from sconce.config import check_positive
from sconce.data import Data
from sconce.errors import ConfigError, DataError
from sconce.progress import track
from sconce.runtime import resolve_device, seed_everything
from sconce.storage import atomic_torch_save

logger = logging.getLogger(__name__)

CHECKPOINT_NAME = "train-checkpoint.pt"


@dataclass
class TrainState:
    """What callbacks see.

    Attributes:
        model: the model being trained (never the DDP wrapper).
        optimizer: its optimizer.
        epoch: current epoch, from 0.
        step: optimizer steps taken so far (after the current one, in ``on_step_end``).
        total_steps: optimizer steps the whole run will take.
        loss: the last batch's loss.
        history: per-epoch records (``{"epoch", "loss"}``).
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    epoch: int = 0
    step: int = 0
    total_steps: int = 0
    loss: float = math.nan
    history: list[dict[str, float]] = field(default_factory=list)


class TrainCallback:
    """Hooks into :func:`train`; override the methods you need.

    Example:
        >>> class KeepZero(TrainCallback):
        ...     def __init__(self, mask): self.mask = mask
        ...     def on_step_end(self, state):
        ...         with torch.no_grad(): state.model.weight.mul_(self.mask)
    """

    def on_train_begin(self, state: TrainState) -> None:
        """Before the first step."""

    def on_step_end(self, state: TrainState) -> None:
        """After each optimizer step (``state.step`` already counts it)."""

    def on_epoch_end(self, state: TrainState) -> None:
        """After each epoch."""

    def on_train_end(self, state: TrainState) -> None:
        """After the last step."""


class NonFiniteLoss(ArithmeticError):
    """Training met a NaN or infinite loss (raised by :class:`StopOnNonFinite`)."""


class StopOnNonFinite(TrainCallback):
    """Stop training at the first NaN or infinite loss, instead of training on garbage.

    Example:
        >>> state = TrainState(model=torch.nn.Linear(1, 1), optimizer=None, loss=float("nan"))
        >>> StopOnNonFinite().on_step_end(state)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        sconce.train.NonFiniteLoss: the training loss became nan at step 0 ...
    """

    def on_step_end(self, state: TrainState) -> None:
        if not math.isfinite(state.loss):
            raise NonFiniteLoss(f"the training loss became {state.loss} at step {state.step} "
                                f"of {state.total_steps}")


@dataclass
class TrainResult:
    """The trained model (the same object that was passed in) and per-epoch history."""

    model: nn.Module
    history: list[dict[str, float]]
    steps: int


def default_optimizer(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW over trainable parameters, no weight decay on biases and norm weights."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for param in model.parameters():
        if param.requires_grad:
            (no_decay if param.dim() <= 1 else decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr)


def cosine_schedule(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int = 0
                    ) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up then cosine decay to zero over ``total_steps``, stepped per batch."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def fit(
    model: nn.Module,
    data: Data | Mapping[str, Any] | DataLoader[Any],
    epochs: float = 1,
    *,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    criterion: Callable[..., torch.Tensor] | None = None,
    teacher: nn.Module | None = None,
    distill_weight: float = 0.5,
    temperature: float = 4.0,
    callbacks: Sequence[TrainCallback] = (),
    device: str | torch.device = "auto",
    seed: int | None = 0,
    progress: bool = True,
    progress_label: str = "training",
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    adapter: ModelAdapter | None = None,
    max_grad_norm: float | None = None,
) -> TrainResult:
    """Train ``model`` in place on the train split and return it with its history.

    Args:
        model: trained in place (and moved to ``device``).
        data: a :class:`sconce.Data`, a dict of loaders, or a train loader.
        epochs: passes over the training set; a fraction trains on that share of one epoch.
        lr, weight_decay: for the default optimizer (AdamW, cosine schedule per step).
        optimizer, scheduler: your own instead; a scheduler you pass steps once per epoch.
        criterion: a loss module instead of the adapter's; the adapter hands it what it
            expects (class scores ``criterion(logits, targets)`` for a classifier).
        teacher: distil from this model: ``loss = (1-w) * task + w * KL(student || teacher)``.
        distill_weight, temperature: the distillation mix ``w`` and softening temperature.
        callbacks: :class:`TrainCallback` objects (mask keepers, schedules, loggers).
        device: ``"auto"`` is CUDA when present.
        seed: seeds Python, NumPy and torch before training (None leaves them alone).
        progress: show progress (rank 0 only): a bar on a terminal, log lines otherwise
            (:func:`sconce.progress.track`), and one log line per epoch.
        progress_label: what the progress lines call this loop ("training", "fine-tuning").
        checkpoint_dir: save model/optimizer state there after every epoch (atomically).
        resume: continue from the checkpoint in ``checkpoint_dir`` when there is one.
        adapter: how to run the model (default: a classifier; :func:`sconce.train` asks
            the plugins first).
        max_grad_norm: clip gradients to this norm.

    Returns:
        A :class:`TrainResult` holding the same model object, trained.
    """
    check_positive("epochs", epochs, allow_zero=True)
    check_positive("lr", lr)
    if not 0.0 <= distill_weight <= 1.0:
        raise ConfigError(f"distill_weight must be in [0, 1], got {distill_weight!r}")
    data = Data(train=data) if isinstance(data, DataLoader) else Data.from_value(data)
    if data.train is None:
        raise DataError("training needs a 'train' loader")
    if seed is not None:
        seed_everything(seed)
    device = resolve_device(device)
    use_ddp = distributed.is_distributed()
    if use_ddp:
        device = distributed.local_device(device)
        distributed.ensure_process_group(device)
    adapter = adapter if adapter is not None else ClassifierAdapter()
    model.to(device)
    if teacher is not None:
        teacher.to(device).eval()

    loader = distributed.shard_loader(data.train, seed or 0) if use_ddp else data.train
    batches_per_epoch = len(loader)
    if batches_per_epoch == 0:
        raise DataError("the training loader yields no batches; is the dataset empty?")
    total_steps = max(1, math.ceil(batches_per_epoch * epochs)) if epochs > 0 else 0
    own_schedule = optimizer is None
    optimizer = optimizer or default_optimizer(model, lr, weight_decay)
    if own_schedule and scheduler is None:
        warmup = min(100, total_steps // 20)
        scheduler = cosine_schedule(optimizer, total_steps, warmup_steps=warmup)
    state = TrainState(model=model, optimizer=optimizer, total_steps=total_steps)

    start_epoch = 0
    checkpoint = Path(checkpoint_dir) / CHECKPOINT_NAME if checkpoint_dir else None
    if resume and checkpoint is not None and checkpoint.is_file():
        saved = torch.load(checkpoint, map_location=device, weights_only=True)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        if scheduler is not None and saved.get("scheduler") is not None:
            scheduler.load_state_dict(saved["scheduler"])
        start_epoch, state.step = int(saved["epoch"]) + 1, int(saved["step"])
        state.history = list(saved.get("history", []))
        logger.info("resumed training from %s after epoch %d", checkpoint, start_epoch)

    runner: nn.Module = distributed.wrap_model(model, device) if use_ddp else model
    if isinstance(criterion, nn.Module):  # plain callables (snnTorch's losses) stay as they are
        criterion = criterion.to(device)
    for callback in callbacks:
        callback.on_train_begin(state)
    epoch_count = math.ceil(epochs)
    show = progress and distributed.is_main_process()
    for epoch in range(start_epoch, epoch_count):
        state.epoch = epoch
        if isinstance(loader.sampler, DistributedSampler):
            loader.sampler.set_epoch(epoch)
        model.train()
        loss_sum, seen = 0.0, 0
        steps_this_epoch = min(batches_per_epoch, total_steps - state.step)
        epoch_started = time.perf_counter()
        bar = track(_limit(loader, steps_this_epoch), total=steps_this_epoch,
                    description=f"{progress_label} epoch {epoch + 1}/{epoch_count}",
                    enabled=show)
        for batch in bar:
            inputs, targets = adapter.split_batch(batch)
            if targets is None:
                raise DataError("training needs labelled batches; this loader yields no targets")
            inputs = adapter.to_device(inputs, device)
            targets = targets.to(device, non_blocking=True)
            outputs = adapter.forward(runner, inputs)
            loss = (adapter.criterion_loss(criterion, outputs, targets) if criterion is not None
                    else adapter.loss(outputs, targets))
            if teacher is not None and distill_weight > 0:
                with torch.no_grad():
                    teacher_outputs = adapter.forward(teacher, inputs)
                loss = (1 - distill_weight) * loss + distill_weight * adapter.distillation_loss(
                    outputs, teacher_outputs, temperature)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]  # unannotated in torch
            if max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
            optimizer.step()
            if own_schedule and scheduler is not None:
                scheduler.step()
            state.step += 1
            state.loss = float(loss.detach())
            loss_sum += state.loss * int(targets.shape[0])
            seen += int(targets.shape[0])
            for callback in callbacks:
                callback.on_step_end(state)
        if not own_schedule and scheduler is not None:
            scheduler.step()
        state.history.append({"epoch": float(epoch + 1), "loss": loss_sum / max(1, seen)})
        if show:
            logger.info("%s epoch %d/%d: loss %.4f, %d steps in %.1f s", progress_label,
                        epoch + 1, epoch_count, loss_sum / max(1, seen), steps_this_epoch,
                        time.perf_counter() - epoch_started)
        for callback in callbacks:
            callback.on_epoch_end(state)
        if checkpoint is not None and distributed.is_main_process():
            atomic_torch_save(checkpoint, {
                "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict() if scheduler is not None else None,
                "epoch": epoch, "step": state.step, "history": state.history,
            })
    if use_ddp:
        distributed.broadcast_buffers(model)
    for callback in callbacks:
        callback.on_train_end(state)
    model.eval()
    return TrainResult(model=model, history=state.history, steps=state.step)


def _limit(batches: Iterable[Any], count: int) -> Iterable[Any]:
    for index, batch in enumerate(batches):
        if index >= count:
            return
        yield batch
