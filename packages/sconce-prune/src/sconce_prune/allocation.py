"""How a magnitude technique shares its sparsity among layers: uniform, global or automatic.

Automatic ratios come from the core's :mod:`sconce.sensitivity`: each layer is pruned alone at
several ratios on a validation subset, ratios are allocated to meet the target at the
least predicted loss, and the allocation is accepted only after it is checked with all
layers pruned together against uniform ratios and global magnitude ranking.

Example:
    >>> from torch import nn
    >>> from sconce_prune.targets import find_targets
    >>> targets = find_targets(nn.Sequential(nn.Linear(10, 10), nn.Linear(10, 10)))
    >>> plan = Plan("uniform", 0.5, {"0": 0.5, "1": 0.5})
    >>> plan.counts(targets, 0.25)
    {'0': 25, '1': 25}
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from sconce.errors import DataError
from sconce.evaluation import EvalResult
from sconce.plotting import save_png
from sconce.sensitivity import Allocation, choose_ratios, plot_sensitivity, scan_sensitivity
from sconce_prune.masks import Block, global_counts, prune_mask, round_counts
from sconce_prune.targets import Target

if TYPE_CHECKING:
    from sconce import Context
    from sconce_prune.config import MagnitudeConfig

logger = logging.getLogger(__name__)

__all__ = ["MagnitudeEvaluator", "Plan", "note_block", "note_result", "plan_allocation"]


@dataclass
class Plan:
    """Final per-layer ratios (or global ranking) and the sparsity they add up to.

    Attributes:
        method: "uniform", "global", or "auto: <accepted candidate>".
        sparsity: final fraction of the targets' weights pruned.
        ratios: target -> final ratio; None ranks all targets together at every step.
        allocation: the checked automatic allocation, when there was one.
    """

    method: str
    sparsity: float
    ratios: dict[str, float] | None
    allocation: Allocation | None = None

    def counts(self, targets: Sequence[Target], sparsity: float) -> dict[str, int]:
        """Pruned values per target for an intermediate ``sparsity`` (ratios scale with it).

        The counts add up to exactly ``round(sparsity * total)`` at the final sparsity.
        """
        total = sum(t.numel for t in targets)
        if self.ratios is None:
            return global_counts(targets, round(sparsity * total))
        scale = sparsity / self.sparsity if self.sparsity > 0 else 0.0
        return round_counts({name: r * scale for name, r in self.ratios.items()},
                            {t.name: t.numel for t in targets})


class MagnitudeEvaluator:
    """A :data:`sconce.sensitivity.Evaluator` for unstructured magnitude pruning.

    Prunes the named targets in place (whole blocks when ``block`` is given), evaluates on
    the validation split (the first ``samples`` samples, the same every call), and puts the
    weights back.

    Example:
        >>> evaluator = MagnitudeEvaluator(model, targets, ctx, 1000)  # doctest: +SKIP
        >>> evaluator({"features.3.0": 0.9}).accuracy  # doctest: +SKIP
        91.4
    """

    def __init__(self, model: nn.Module, targets: Sequence[Target], ctx: Context,
                 samples: int, block: Block | None = None) -> None:
        self.model = model
        self.block = block
        self.targets = {t.name: t for t in targets}
        self.ctx = ctx
        self.samples = samples
        self.calls = 0

    def __call__(self, ratios: Mapping[str, float]) -> EvalResult:
        saved: dict[str, torch.Tensor] = {}
        with torch.no_grad():
            for name, ratio in ratios.items():
                weight = self.targets[name].weight
                saved[name] = weight.detach().clone()
                keep = prune_mask(weight, round(ratio * weight.numel()), self.block)
                weight.masked_fill_(~keep, 0.0)
        try:
            self.calls += 1
            return self.ctx.evaluate(self.model, split="val", max_samples=self.samples)
        finally:
            with torch.no_grad():
                for name, original in saved.items():
                    self.targets[name].weight.copy_(original)


def plan_allocation(model: nn.Module, targets: Sequence[Target], config: MagnitudeConfig,
                    ctx: Context, label: str) -> Plan:
    """The :class:`Plan` for ``config.allocation``; runs the sensitivity analysis for "auto".

    Leaves the chosen ratios and the check's accuracies in the report (``ctx.note``) and a
    plot of the sensitivity curves (``ctx.artifact_path``).

    Raises:
        DataError: for "auto" without validation data.
    """
    if config.allocation == "uniform":
        return Plan("uniform", config.sparsity, {t.name: config.sparsity for t in targets})
    if config.allocation == "global":
        return Plan("global", config.sparsity, None)
    data = ctx.data
    if data is None or (data.val is None and data.test is None):
        raise DataError("allocation='auto' needs validation data for its sensitivity analysis; "
                        "pass data with a 'val' (or 'train') split, or use allocation="
                        "'uniform' or 'global'")
    if data.val is None:
        logger.warning("no validation split: the sensitivity analysis uses the test split")
    evaluator = MagnitudeEvaluator(model, targets, ctx, config.sensitivity_samples,
                                   config.block)
    sensitivity = scan_sensitivity([t.name for t in targets], evaluator,
                                   config.sensitivity_ratios)
    sizes = {t.name: t.numel for t in targets}
    total = sum(sizes.values())

    def global_ratios(sparsity: float) -> dict[str, float]:
        counts = global_counts(targets, round(sparsity * total))
        return {name: counts[name] / sizes[name] for name in sizes}

    # the stage's own budget, else what is left of the run's max_accuracy_drop
    budget = ctx.accuracy_budget(model, config.max_accuracy_drop, config.sensitivity_samples)
    allocation = choose_ratios(
        sensitivity, sizes, evaluator,
        sparsity=None if budget is not None else config.sparsity,
        max_accuracy_drop=budget, max_sparsity=config.max_sparsity,
        candidates={"global": global_ratios})
    title = (f"{label}: layer sensitivity - chosen: {allocation.method}, "
             f"{allocation.sparsity:.0%} overall, {allocation.accuracy:.1f}% together before "
             "fine-tuning (circles)")
    save_png(plot_sensitivity(sensitivity, chosen=allocation.ratios, title=title),
             ctx.artifact_path(f"{label}-sensitivity.png"))
    checked = ", ".join(f"{name} {c['accuracy']:.2f}%"
                        for name, c in allocation.candidates.items())
    ctx.note("allocation", f"auto: {allocation.method} ratios accepted (validation accuracy, "
             f"all layers pruned together, before fine-tuning: {checked}; dense "
             f"{allocation.baseline_accuracy:.2f}%)")
    if budget is not None:
        source = "the stage's" if config.max_accuracy_drop is not None else "the run's"
        ctx.note("sparsity found", f"{allocation.sparsity:.1%} of the pruned layers' weights "
                 f"within a {budget:.3g}-point budget ({source} max_accuracy_drop; "
                 "validation, before fine-tuning)")
    ctx.note("per-layer ratios", {name: round(r, 4) for name, r in allocation.ratios.items()})
    ctx.note("sensitivity evaluations", evaluator.calls)
    return Plan(f"auto: {allocation.method}", allocation.sparsity, dict(allocation.ratios),
                allocation)


def note_result(ctx: Context, targets: Sequence[Target], skipped: Sequence[Target]) -> float:
    """Record the pruned layers' sparsity and the skipped layers; return that sparsity.

    Example:
        >>> from sconce import Context
        >>> from sconce_prune.targets import find_targets
        >>> ctx = Context.for_inputs(torch.zeros(1, 2))
        >>> note_result(ctx, find_targets(nn.Linear(2, 2)), [])
        0.0
        >>> ctx.stage.notes["skipped layers"]
        'none'
    """
    total = sum(t.numel for t in targets)
    with torch.no_grad():
        zeros = sum(int((t.weight == 0).sum()) for t in targets)
    sparsity = zeros / total if total else 0.0
    ctx.note("pruned layers", f"{len(targets)} layers, {total:,} weights, "
             f"{sparsity:.2%} zero")
    ctx.note("skipped layers", ", ".join(t.name for t in skipped) or "none")
    return sparsity


def note_block(ctx: Context, block: Block | None, misfits: Sequence[Target]) -> None:
    """Record the block pattern and the layers it does not tile (left unpruned).

    Example:
        >>> from sconce import Context
        >>> ctx = Context.for_inputs(torch.zeros(1, 2))
        >>> note_block(ctx, (1, 8), [])
        >>> ctx.stage.notes["pattern"]
        'blocks of 1x8 on (out, in * kh * kw)'
    """
    if block is None:
        return
    ctx.note("pattern", f"blocks of {block[0]}x{block[1]} on (out, in * kh * kw)")
    if misfits:
        ctx.note("not block-pruned (the block does not divide the weight)",
                 ", ".join(f"{t.name} {tuple(t.weight.shape)}" for t in misfits))
