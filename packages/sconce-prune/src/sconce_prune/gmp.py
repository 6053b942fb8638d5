"""``prune.gmp``: gradual magnitude pruning with automatic per-layer sparsity.

During fine-tuning, sparsity rises on Zhu & Gupta's cubic schedule; at each pruning step
the masks are recomputed from the current magnitudes, and after every optimizer step the
pruned weights are set back to exactly zero (whatever momentum or weight decay do). By
default the per-layer ratios come from a sensitivity analysis checked on validation
(:mod:`sconce_prune.allocation`). At the end the masks are folded into the weights: the
model is a plain module with exact zeros. Fine-tuning distils from the run's teacher.

Example:
    >>> import sconce
    >>> result = sconce.compress(model, "fashion-mnist", recipe=[("prune.gmp", {"sparsity": 0.8})],
    ...                          finetune_epochs=2)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from torch import nn

from sconce.technique import Technique
from sconce.train import TrainCallback, TrainState
from sconce_prune.allocation import Plan, note_block, note_result, plan_allocation
from sconce_prune.config import GMPConfig
from sconce_prune.masks import MaskSet, split_by_block
from sconce_prune.schedule import CubicSchedule
from sconce_prune.targets import find_targets, select_targets

if TYPE_CHECKING:
    from sconce import Context

logger = logging.getLogger(__name__)

__all__ = ["GradualMagnitudePruning", "GradualPruning"]


class GradualPruning(TrainCallback):
    """Recompute masks on the schedule's pruning steps; enforce them after every step.

    Example:
        >>> from sconce_prune.allocation import Plan
        >>> callback = GradualPruning(MaskSet([]), Plan("uniform", 0.5, {}),
        ...                           CubicSchedule(0.0, 0.5))
        >>> callback.history
        []
    """

    def __init__(self, masks: MaskSet, plan: Plan, schedule: CubicSchedule) -> None:
        self.masks = masks
        self.plan = plan
        self.schedule = schedule
        self.history: list[tuple[int, float]] = []
        self._points: list[int] = []
        self._total = 0

    def on_train_begin(self, state: TrainState) -> None:
        self._total = max(1, state.total_steps)
        self._points = self.schedule.pruning_steps(self._total)
        if self._points and self._points[0] <= state.step:
            self._prune(state.step)

    def on_step_end(self, state: TrainState) -> None:
        if self._points and state.step >= self._points[0]:
            self._prune(state.step)
        else:
            self.masks.apply()

    def on_train_end(self, state: TrainState) -> None:
        if not self.history or self.history[-1][1] != self.schedule.final:
            self._points = []
            self._update(state.step, self.schedule.final)
        self.masks.apply()

    def _prune(self, step: int) -> None:
        while self._points and self._points[0] <= step:
            self._points.pop(0)
        self._update(step, self.schedule.sparsity_at(step, self._total))

    def _update(self, step: int, sparsity: float) -> None:
        self.masks.set_counts(self.plan.counts(self.masks.targets, sparsity))
        self.history.append((step, sparsity))
        logger.debug("step %d: sparsity %.4f", step, sparsity)


class GradualMagnitudePruning(Technique):
    """Gradual magnitude pruning (cubic schedule) with automatic per-layer ratios.

    Example:
        >>> GradualMagnitudePruning().Config().allocation
        'auto'
    """

    name = "prune.gmp"
    kind = "prune"
    Config = GMPConfig

    def apply(self, model: nn.Module, config: GMPConfig, ctx: Context) -> nn.Module:
        targets, skipped = select_targets(find_targets(model), config.skip_layers)
        targets, misfits = split_by_block(targets, config.block)
        plan = plan_allocation(model, targets, config, ctx, "prune-gmp")
        epochs = ctx.finetune_epochs if config.finetune_epochs is None else config.finetune_epochs
        masks = MaskSet(targets, config.block)
        can_train = ctx.data is not None and ctx.data.train is not None
        if epochs > 0 and can_train and plan.sparsity > 0:
            self._gradual(model, config, ctx, plan, masks, epochs)
        else:
            masks.set_counts(plan.counts(targets, plan.sparsity))
            ctx.note("schedule", "no fine-tuning budget or training data: pruned in one shot")
        masks.fold()
        note_block(ctx, config.block, misfits)
        sparsity = note_result(ctx, targets, [*skipped, *misfits])
        logger.info("prune.gmp: %s, %.2f%% of the pruned layers' weights zero", plan.method,
                    100 * sparsity)
        return model

    def _gradual(self, model: nn.Module, config: GMPConfig, ctx: Context, plan: Plan,
                 masks: MaskSet, epochs: float) -> None:
        initial = min(config.initial_sparsity, plan.sparsity)
        schedule = CubicSchedule(initial, plan.sparsity, config.prune_start, config.prune_end,
                                 config.pruning_steps)
        callback = GradualPruning(masks, plan, schedule)
        options = {"lr": config.lr} if config.lr is not None else {}
        ctx.finetune(model, epochs=epochs, teacher=ctx.teacher, callbacks=[callback], **options)
        ctx.note("schedule", _describe(schedule, callback, epochs))
        ctx.note("fine-tuned", f"{epochs:g} epoch(s) while pruning"
                 + (", distilled from the original" if ctx.teacher is not None else ""))


def _describe(schedule: CubicSchedule, callback: GradualPruning, epochs: float) -> str:
    steps: Sequence[tuple[int, float]] = callback.history
    return (f"cubic {schedule.initial:.0%} -> {schedule.final:.2%} over "
            f"{schedule.start:.0%}-{schedule.end:.0%} of {epochs:g} epoch(s), "
            f"{len(steps)} mask updates (last at step {steps[-1][0] if steps else 0})")

