"""``prune.magnitude``: one-shot magnitude pruning, the simple baseline.

The smallest-magnitude weights are zeroed in one step (per layer, globally, or with
automatic per-layer ratios); the pipeline then fine-tunes with the zeros held.

Example:
    >>> import sconce
    >>> result = sconce.compress(model, data, recipe=[("prune.magnitude", {"sparsity": 0.8})]
    ...                          )  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from torch import nn

from sconce.technique import Technique
from sconce_prune.allocation import note_block, note_result, plan_allocation
from sconce_prune.config import MagnitudeConfig
from sconce_prune.masks import MaskSet, split_by_block
from sconce_prune.targets import find_targets, select_targets

if TYPE_CHECKING:
    from sconce import Context

logger = logging.getLogger(__name__)

__all__ = ["MagnitudePruning"]


class MagnitudePruning(Technique):
    """One-shot magnitude pruning of Linear, Conv, ConvTranspose, Embedding and attention.

    Example:
        >>> import torch
        >>> from sconce import Context
        >>> model = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 2))
        >>> ctx = Context.for_inputs(torch.randn(1, 8))
        >>> pruned = MagnitudePruning().apply(model, MagnitudeConfig(sparsity=0.75), ctx)
        >>> int((pruned[1].weight == 0).sum())
        48
    """

    name = "prune.magnitude"
    kind = "prune"
    Config = MagnitudeConfig

    def apply(self, model: nn.Module, config: MagnitudeConfig, ctx: Context) -> nn.Module:
        targets, skipped = select_targets(find_targets(model), config.skip_layers)
        targets, misfits = split_by_block(targets, config.block)
        plan = plan_allocation(model, targets, config, ctx, "prune-magnitude")
        masks = MaskSet(targets, config.block)
        masks.set_counts(plan.counts(targets, plan.sparsity))
        masks.fold()
        note_block(ctx, config.block, misfits)
        sparsity = note_result(ctx, targets, [*skipped, *misfits])
        logger.info("prune.magnitude: %s, %.2f%% of the pruned layers' weights zero",
                    plan.method, 100 * sparsity)
        return model
