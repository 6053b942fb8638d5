"""Keep pruned weights at zero while a model is fine-tuned.

:class:`KeepZeros` holds keep-masks for parameters and re-applies them before training and
after every optimizer step, whatever momentum or weight decay do. The pipeline uses
``KeepZeros.of(model)`` (the zero pattern a pruning stage left) when it fine-tunes; a
technique holding its own masks passes them in (``KeepZeros({name: (param, keep)})``).

Example:
    >>> import torch
    >>> from torch import nn
    >>> layer = nn.Linear(4, 4)
    >>> with torch.no_grad(): layer.weight[:, :2] = 0
    >>> keeper = KeepZeros.of(layer)
    >>> with torch.no_grad(): _ = layer.weight.add_(1.0)
    >>> keeper.apply()
    >>> int((layer.weight == 0).sum())
    8
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from sconce.train import TrainCallback, TrainState


class KeepZeros(TrainCallback):
    """Before training and after every optimizer step, zero the weights outside the masks.

    Args:
        masks: name -> (parameter, boolean keep-mask of its shape).

    Example:
        >>> layer = nn.Linear(2, 2)
        >>> keeper = KeepZeros({"weight": (layer.weight, torch.tensor([[True, False]] * 2))})
        >>> keeper.apply(); int((layer.weight == 0).sum())
        2
    """

    def __init__(self, masks: Mapping[str, tuple[nn.Parameter, torch.Tensor]]) -> None:
        self.masks = dict(masks)

    @classmethod
    def of(cls, model: nn.Module, min_sparsity: float = 0.01) -> KeepZeros:
        """Remember the zero pattern of every weight of ``model`` that is sparse enough.

        Only parameters with at least ``min_sparsity`` zeros are tracked, so dense models
        cost nothing.
        """
        masks = {}
        for name, param in model.named_parameters():
            if param.dim() < 2:
                continue
            keep = param.detach() != 0
            if 1.0 - keep.float().mean().item() >= min_sparsity:
                masks[name] = (param, keep)
        return cls(masks)

    def apply(self) -> None:
        """Zero the masked weights now."""
        with torch.no_grad():
            for param, keep in self.masks.values():
                param.mul_(keep)

    def on_train_begin(self, state: TrainState) -> None:
        self.apply()

    def on_step_end(self, state: TrainState) -> None:
        self.apply()

    def __bool__(self) -> bool:
        return bool(self.masks)
