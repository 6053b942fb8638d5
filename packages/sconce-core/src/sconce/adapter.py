"""How to run a model: forward a batch, compute the loss, turn outputs into predictions.

Every technique and metric runs models only through an adapter, so models that need special
running (a spiking network's time steps and state resets) go through the same pipeline. The
default is :class:`ClassifierAdapter`; plugins answer ``sconce_model_adapter`` for others
(:func:`sconce.get_adapter` asks them).

Example:
    >>> import torch
    >>> from torch import nn
    >>> adapter = ClassifierAdapter()
    >>> outputs = adapter.forward(nn.Linear(4, 3), torch.randn(2, 4))
    >>> adapter.predict(outputs).shape
    torch.Size([2])
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from sconce.data import split_batch
from sconce.errors import DataError


class ModelAdapter:
    """Base adapter: a plain classifier. Subclass and override what differs.

    Methods take and return tensors; ``inputs`` may also be a tuple of tensors for models
    with several inputs.

    Attributes:
        task: what the model does (``classification``, ``causal-lm``, ``embedding``, ...);
            metrics that declare ``tasks`` are measured by default only for those.
        recipe_groups: the techniques the default recipe tries for the models this adapter
            runs, one group per stage (the first installed technique of each group is used);
            None: the core's :data:`sconce.pipeline.DEFAULT_RECIPE_GROUPS`.
    """

    task: str = "classification"
    recipe_groups: ClassVar[tuple[tuple[str, ...], ...] | None] = None

    def split_batch(self, batch: Any) -> tuple[Any, torch.Tensor | None]:
        """Split a loader's batch into ``(inputs, targets)``."""
        return split_batch(batch)

    def to_device(self, inputs: Any, device: torch.device | str) -> Any:
        """Move inputs (a tensor or a tuple of tensors) to ``device``."""
        if isinstance(inputs, torch.Tensor):
            return inputs.to(device, non_blocking=True)
        if isinstance(inputs, (tuple, list)):
            return type(inputs)(self.to_device(t, device) for t in inputs)
        return inputs

    def reset(self, model: nn.Module) -> None:
        """Clear any state carried between batches (spiking neurons' membranes)."""

    def forward(self, model: nn.Module, inputs: Any) -> Any:
        """Run the model on one batch of inputs and return its raw outputs."""
        self.reset(model)
        if isinstance(inputs, tuple):
            return model(*inputs)
        return model(inputs)

    def logits(self, outputs: Any) -> torch.Tensor:
        """Class scores (batch, classes) from raw outputs; used for distillation."""
        if isinstance(outputs, (tuple, list)):
            outputs = outputs[0]
        return outputs

    def loss(self, outputs: Any, targets: torch.Tensor) -> torch.Tensor:
        """The training loss of a batch."""
        logits = self.logits(outputs)
        try:
            return F.cross_entropy(logits, targets)
        except IndexError as exc:  # a label outside 0..classes-1 (how CPU torch reports it)
            raise DataError(f"a label is not a class index of this model's "
                            f"{logits.shape[-1]} outputs ({exc}); relabel the data, or give a "
                            "model with an output per class") from None

    def criterion_loss(self, criterion: Any, outputs: Any, targets: torch.Tensor
                       ) -> torch.Tensor:
        """The loss of a criterion the user chose (``train(criterion=...)``).

        The default hands it the class scores; adapters whose raw outputs hold more (a
        spiking network's spikes over time) pass what their kind of criterion expects.
        """
        return criterion(self.logits(outputs), targets)

    def predict(self, outputs: Any) -> torch.Tensor:
        """Predicted class indices (batch,)."""
        return self.logits(outputs).argmax(dim=-1)

    def distillation_loss(
        self, outputs: Any, teacher_outputs: Any, temperature: float = 4.0
    ) -> torch.Tensor:
        """KL divergence between softened student and teacher distributions, times T^2."""
        student = F.log_softmax(self.logits(outputs) / temperature, dim=-1)
        teacher = F.softmax(self.logits(teacher_outputs).detach() / temperature, dim=-1)
        return F.kl_div(student, teacher, reduction="batchmean") * temperature**2


class ClassifierAdapter(ModelAdapter):
    """The default adapter: ``model(x)`` gives logits, cross-entropy loss, argmax predictions.

    Example:
        >>> ClassifierAdapter().predict(torch.tensor([[0.1, 0.9]]))
        tensor([1])
    """
