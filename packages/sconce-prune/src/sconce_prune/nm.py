"""``prune.nm``: N:M semi-structured sparsity (2:4, 4:8, any N:M).

In every group of ``m`` consecutive weights along a layer's input dimension (input
channels, for convolutions), the ``n`` largest in magnitude are kept. The masks are held
through fine-tuning exactly as ``prune.gmp`` holds its own (re-applied after every optimizer
step), then folded in. Weights that are already zero (an earlier pruning stage) stay zero.

Example:
    >>> import sconce
    >>> result = sconce.compress(model, data, recipe=[("prune.nm", {"n": 2, "m": 4})]
    ...                          )  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from torch import nn

from sconce.errors import TechniqueError
from sconce.technique import Technique
from sconce_prune.allocation import note_result
from sconce_prune.config import NMConfig
from sconce_prune.masks import MaskSet, nm_mask
from sconce_prune.targets import find_targets, select_targets

if TYPE_CHECKING:
    from sconce import Context

logger = logging.getLogger(__name__)

__all__ = ["NMPruning"]


class NMPruning(Technique):
    """N:M semi-structured masks along the input dimension, held through fine-tuning.

    Example:
        >>> import torch
        >>> from sconce import Context
        >>> model = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 2))
        >>> ctx = Context.for_inputs(torch.randn(1, 8))
        >>> pruned = NMPruning().apply(model, NMConfig(n=2, m=4), ctx)
        >>> (pruned[1].weight.reshape(8, 2, 4) != 0).sum(-1).max().item()
        2
    """

    name = "prune.nm"
    kind = "prune"
    Config = NMConfig

    def apply(self, model: nn.Module, config: NMConfig, ctx: Context) -> nn.Module:
        targets, skipped = select_targets(find_targets(model), config.skip_layers)
        fitting = [t for t in targets if t.weight.shape[t.input_dim] % config.m == 0]
        misfits = [t for t in targets if t not in fitting]
        if not fitting:
            raise TechniqueError(
                f"no prunable layer has an input dimension divisible by m={config.m} "
                f"({', '.join(f'{t.name}: {t.weight.shape[t.input_dim]}' for t in targets)}); "
                "choose a smaller m")
        if misfits:
            ctx.note("not N:M (input dimension not a multiple of m)",
                     ", ".join(t.name for t in misfits))
        masks = MaskSet(fitting)
        # weights an earlier stage already pruned stay pruned: at most n per group survive
        masks.set_masks({t.name: nm_mask(t.weight, config.n, config.m, t.input_dim)
                         & (t.weight.detach() != 0) for t in fitting})
        epochs = ctx.finetune_epochs if config.finetune_epochs is None else config.finetune_epochs
        if epochs > 0 and ctx.data is not None and ctx.data.train is not None:
            options = {"lr": config.lr} if config.lr is not None else {}
            ctx.finetune(model, epochs=epochs, teacher=ctx.teacher, callbacks=[masks.keeper()],
                         **options)
            ctx.note("fine-tuned", f"{epochs:g} epoch(s) with the {config.n}:{config.m} masks "
                     "held" + (", distilled from the original" if ctx.teacher is not None else ""))
        masks.fold()
        ctx.note("pattern", f"{config.n}:{config.m} along the input dimension")
        note_result(ctx, fitting, [*skipped, *misfits])
        return model
