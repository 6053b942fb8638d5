"""The configuration of ``prune.channel``.

Example:
    >>> ChannelPruneConfig(sparsity=0.5, importance="taylor").round_to
    8
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sconce.config import PruneConfig, check_choice, check_positive, check_range
from sconce.errors import ConfigError
from sconce.recipe import Target
from sconce_prune.channel.importance import CRITERIA

AGGREGATIONS = ("sum", "mean", "max")
RANKINGS = ("uniform", "global")
ATTENTION_MODES = ("heads", "dims")
ALLOCATIONS = ("uniform", "sensitivity")
ON_UNKNOWN = ("error", "freeze")
SCHEDULES = ("oneshot", "gradual")


@dataclass
class ChannelPruneConfig(PruneConfig):
    """Structured channel pruning that physically removes channels.

    Attributes:
        sparsity: fraction of the channels of every prunable group that is removed.
        importance: how channels are scored: ``group_l2`` (default: the squared L2 norm of
            a channel's weights in every coupled layer, producers and consumers; after
            fine-tuning it beat ``bn_scale`` by 0.22 points in benchmarks/channel_pruning.py's
            seed-0 screen, see the package README), ``bn_scale``
            (|gamma| of the BatchNorm that follows), ``l1`` / ``l2`` (norms of the producing
            weights), ``taylor`` / ``group_taylor`` / ``hessian`` (from the gradients of a
            few training batches) or ``random`` (a control).
        aggregation: how the scores of a channel's coupled layers are combined.
        consumers: also score a channel by the weights that read it (next layers' input
            columns), not only by those that produce it.
        ranking: ``uniform`` removes ``sparsity`` of every group; ``global`` ranks all
            channels together (scores normalised per group) and removes ``sparsity`` of all.
        round_to: kept widths are multiples of this (hardware-friendly); 1 turns it off.
        allocation: ``uniform`` (every group at ``sparsity``) or ``sensitivity``: per-group
            ratios from a sensitivity scan on the validation split, allocated to remove
            ``sparsity`` of all channels and checked with all groups pruned together
            (:mod:`sconce.sensitivity`).
        sensitivity_samples: validation samples per sensitivity evaluation.
        ratios: per-module sparsity overrides, ``{"features.3*": 0.3}`` (fnmatch patterns
            on the name of the module that produces a group's channels).
        ignored_layers: modules (fnmatch patterns) whose output channels are never pruned.
        target_macs: instead of ``sparsity``, search the uniform ratio that meets this MACs
            target, written as the run's constraints are (:class:`sconce.recipe.Target`):
            ``"4x"`` (at most a quarter of the original's MACs) or an absolute count
            (``"300M"``, ``3e8``); with ``allocation="sensitivity"``, the per-group ratios of
            the sensitivity allocation that meet it. Unset (and no ``target_latency``), the
            run's ``target_macs`` constraint applies (quantization after it keeps the MACs).
        target_latency: instead of ``sparsity``, search the uniform ratio whose deployed
            model (BN folded, channels-last as configured) meets this batch-1 latency:
            ``"2.5x"`` (a speed-up over the original, measured) or milliseconds (``"0.4ms"``).
        attention: ``heads`` removes whole attention heads (``num_heads`` shrinks),
            ``dims`` removes the same dimensions from every head.
        on_unknown: an operation the engine does not know that touches prunable channels
            is an ``error`` (default) or ``freeze`` s those channels.
        taylor_batches: training batches whose gradients the Taylor criterion uses.
        schedule: ``oneshot`` prunes before fine-tuning (in ``steps`` steps); ``gradual``
            drops channels during fine-tuning on a cubic schedule (their producing weights
            held at zero, so removing them is exact), removes them once ``gradual_end`` of
            fine-tuning is done and trains on at the final width.
        gradual_end: the fraction of fine-tuning after which every channel to go is gone.
        gradual_updates: how many times the dropped channels are chosen again on the way.
        steps: prune in this many equal steps, fine-tuning between them (iterative pruning).
        bn_recalibration: training batches run (no gradients) after each pruning step to
            re-estimate the BatchNorm statistics of the narrower network; 0 turns it off.
        finetune: fine-tune inside the technique (with distillation from the original model
            when the run distils); the budget is the run's ``finetune_epochs``.
        finetune_lr_scale: the fine-tuning learning rate is the run's ``finetune_lr`` times
            this. Removing channels disturbs a network far more than masking weights, and a
            larger step recovers it faster: VGG on Fashion-MNIST, 50% channels, 2 epochs,
            validation accuracy 92.12% at 1x, 92.56% at 3x, 92.54% at 5x.
        fold_bn: fold each BatchNorm into the conv/linear before it in the final model.
        channels_last: store conv weights channels-last so oneDNN runs NHWC kernels (measured
            faster on CPU, see benchmarks/channel_pruning.py); the record restores it.
        seed: seed of the random criterion.
    """

    sparsity: float = 0.5
    importance: str = "group_l2"
    aggregation: str = "sum"
    consumers: bool = False
    ranking: str = "uniform"
    round_to: int = 8
    allocation: str = "uniform"
    sensitivity_samples: int = 512
    ratios: dict[str, float] = field(default_factory=dict)
    ignored_layers: list[str] = field(default_factory=list)
    target_macs: str | float | None = None
    target_latency: str | float | None = None
    attention: str = "heads"
    on_unknown: str = "error"
    taylor_batches: int = 4
    schedule: str = "oneshot"
    gradual_end: float = 0.5
    gradual_updates: int = 8
    steps: int = 1
    bn_recalibration: int = 32
    finetune: bool = True
    finetune_lr_scale: float = 3.0
    fold_bn: bool = True
    channels_last: bool = True
    seed: int = 0

    def validate(self) -> None:
        super().validate()
        check_choice("importance", self.importance, CRITERIA)
        check_choice("aggregation", self.aggregation, AGGREGATIONS)
        check_choice("ranking", self.ranking, RANKINGS)
        check_choice("attention", self.attention, ATTENTION_MODES)
        check_choice("on_unknown", self.on_unknown, ON_UNKNOWN)
        check_choice("allocation", self.allocation, ALLOCATIONS)
        check_choice("schedule", self.schedule, SCHEDULES)
        check_range("gradual_end", self.gradual_end, 0.0, 1.0, low_inclusive=False)
        check_positive("gradual_updates", self.gradual_updates)
        if self.schedule == "gradual" and self.steps != 1:
            raise ConfigError("schedule='gradual' sets its own steps; leave steps at 1")
        check_positive("sensitivity_samples", self.sensitivity_samples)
        if isinstance(self.round_to, bool) or not isinstance(self.round_to, int) \
                or self.round_to < 1:
            raise ConfigError(f"round_to must be an int >= 1 (1 turns rounding off), "
                              f"got {self.round_to!r}")
        if not isinstance(self.ratios, dict):
            raise ConfigError(f"ratios must map module-name patterns to sparsities, "
                              f"got {self.ratios!r}")
        for pattern, ratio in self.ratios.items():
            check_range(f"ratios[{pattern!r}]", ratio, 0.0, 1.0, high_inclusive=False)
        if isinstance(self.ignored_layers, str) or not all(
                isinstance(p, str) for p in self.ignored_layers):
            raise ConfigError(f"ignored_layers must be a list of module-name patterns, "
                              f"got {self.ignored_layers!r}")
        macs = Target.parse(self.target_macs, "target_macs")
        if macs is not None and not macs.is_ratio and macs.value < 1:
            raise ConfigError(f"target_macs {self.target_macs!r} is an absolute count of MACs; "
                              f"for a reduction write a ratio like '{1 / macs.value:.3g}x'")
        Target.parse(self.target_latency, "target_latency")
        if self.target_macs is not None and self.target_latency is not None:
            raise ConfigError("give target_macs or target_latency, not both")
        check_positive("taylor_batches", self.taylor_batches)
        check_positive("finetune_lr_scale", self.finetune_lr_scale)
        check_positive("bn_recalibration", self.bn_recalibration, allow_zero=True)
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise ConfigError(f"steps must be an int >= 1, got {self.steps!r}")
