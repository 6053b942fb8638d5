"""Exact evaluation of a model over a loader: correct predictions, samples, mean loss.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from torch.utils.data import DataLoader, TensorDataset
    >>> from sconce.adapter import ClassifierAdapter
    >>> model = nn.Linear(2, 2)
    >>> loader = DataLoader(TensorDataset(torch.randn(10, 2), torch.zeros(10, dtype=torch.long)))
    >>> result = evaluate(model, loader, ClassifierAdapter(), torch.device("cpu"))
    >>> result.total
    10
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from sconce.adapter import ModelAdapter
from sconce.errors import DataError
from sconce.runtime import model_device


@dataclass(frozen=True)
class EvalResult:
    """Counts from one pass over a loader.

    Attributes:
        correct: predictions equal to the target.
        total: labelled samples seen.
        loss_sum: sum of per-batch mean losses times batch sizes.
    """

    correct: int
    total: int
    loss_sum: float

    @property
    def accuracy(self) -> float:
        """Accuracy in percent, exact: ``100 * correct / total``."""
        return 100.0 * self.correct / self.total if self.total else float("nan")

    @property
    def loss(self) -> float:
        """Mean loss per sample."""
        return self.loss_sum / self.total if self.total else float("nan")


def evaluate(
    model: nn.Module,
    batches: Iterable[Any],
    adapter: ModelAdapter,
    device: torch.device,
    *,
    max_samples: int | None = None,
) -> EvalResult:
    """Count correct predictions and the loss over ``batches``, in eval mode, without grads.

    The model's train/eval mode is restored afterwards.
    """
    device = model_device(model, device)
    was_training = model.training
    model.eval()
    correct = total = 0
    loss_sum = 0.0
    try:
        with torch.inference_mode():
            for batch in batches:
                inputs, targets = adapter.split_batch(batch)
                if targets is None:
                    raise DataError("accuracy needs labelled data; this loader yields no targets")
                inputs = adapter.to_device(inputs, device)
                targets = targets.to(device)
                outputs = adapter.forward(model, inputs)
                predictions = adapter.predict(outputs)
                if predictions.shape != targets.shape:
                    raise DataError(
                        f"predictions of shape {tuple(predictions.shape)} do not match targets "
                        f"of shape {tuple(targets.shape)}; is this a classification dataset?"
                    )
                correct += int((predictions == targets).sum())
                count = int(targets.numel())
                loss_sum += float(adapter.loss(outputs, targets)) * count
                total += count
                if max_samples is not None and total >= max_samples:
                    break
    finally:
        model.train(was_training)
    return EvalResult(correct, total, loss_sum)
