"""``prune.channel``: structured channel pruning as a sconce technique.

``apply`` prunes (in one shot, in ``steps`` passes, or gradually during fine-tuning),
fine-tunes through the core's loop with distillation from the original model, folds
BatchNorms, and leaves an architecture record so that ``sconce.load`` rebuilds the pruned
shapes without unpickling code; ``restore`` replays it.

Example:
    >>> import sconce
    >>> result = sconce.compress(sconce.models.vgg(in_channels=1, image_size=28),
    ...                          "fashion-mnist", recipe=["prune.channel"])  # doctest: +SKIP
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from sconce.context import Context
from sconce.errors import ConfigError
from sconce.metrics.timing import TimingSettings, time_call
from sconce.recipe import Target
from sconce.technique import Technique
from sconce_prune.channel.config import ChannelPruneConfig
from sconce_prune.channel.folding import fold_batchnorms, recalibrate_batchnorms
from sconce_prune.channel.gradual import GradualChannelMasks
from sconce_prune.channel.importance import GRADIENT_CRITERIA
from sconce_prune.channel.macs import count_macs
from sconce_prune.channel.pruner import ChannelPruner, PruneReport, prune_channels, search_ratio
from sconce_prune.channel.record import changes, replay, snapshot, to_channels_last
from sconce_prune.schedule import CubicSchedule

logger = logging.getLogger(__name__)


def _taylor_batches(ctx: Context, count: int) -> Iterator[tuple[Any, torch.Tensor]]:
    data = ctx.require_data()
    split = "train" if data.train is not None else "calibration"
    for batch in itertools.islice(data.batches(split), count):
        inputs, targets = ctx.adapter.split_batch(batch)
        if targets is None:
            continue
        yield ctx.adapter.to_device(inputs, ctx.device), targets.to(ctx.device)


def _input_batches(ctx: Context, count: int) -> Iterator[Any]:
    data = ctx.require_data()
    for batch in itertools.islice(data.batches("train"), count):
        inputs, _ = ctx.adapter.split_batch(batch)
        yield ctx.adapter.to_device(inputs, ctx.device)


def pruning_options(config: ChannelPruneConfig) -> dict[str, Any]:
    """The keyword arguments of :class:`ChannelPruner` that a config sets.

    Example:
        >>> pruning_options(ChannelPruneConfig())["round_to"]
        8
    """
    return {"importance": config.importance, "aggregation": config.aggregation,
            "ranking": config.ranking, "round_to": config.round_to, "ratios": config.ratios,
            "ignored_layers": config.ignored_layers, "attention": config.attention,
            "on_unknown": config.on_unknown, "seed": config.seed,
            "consumers": config.consumers}


class ChannelPruning(Technique):
    """Structured channel pruning: removes whole channels for a smaller, faster dense model.

    Example:
        >>> ChannelPruning().name
        'prune.channel'
    """

    name = "prune.channel"
    kind = "prune"
    Config = ChannelPruneConfig

    def apply(self, model: nn.Module, config: ChannelPruneConfig,
              ctx: Context) -> nn.Module:
        """Prune ``model`` (the core's copy), fine-tune, fold BatchNorms; return it."""
        example = ctx.adapter.to_device(ctx.example_inputs(1), ctx.device)
        if isinstance(example, list):
            example = tuple(example)
        before = snapshot(model)
        macs_before = count_macs(model, example)
        options = pruning_options(config)
        sparsity = config.sparsity
        by_sensitivity = config.allocation == "sensitivity"
        # the stage's own target, else the run's target_macs (pruning alone sets the MACs; a
        # run's latency or size target is end-to-end, met by the planner, not by one stage)
        macs = None if config.target_latency is not None else ctx.limit("target_macs",
                                                                        config.target_macs)
        if isinstance(macs, Target) and config.target_macs is None:
            ctx.note("target_macs", f"{macs} (the run's constraint)")
        if config.target_latency is not None or (macs is not None and not by_sensitivity):
            sparsity = self._search_ratio(model, example, config, ctx, options, macs)
        if by_sensitivity:
            options["ratios"] = {**self._sensitivity_ratios(model, example, config, ctx,
                                                            options, macs), **config.ratios}
        report = self._prune_and_finetune(model, example, sparsity, options, config, ctx)
        folded = report.folded
        if config.fold_bn and not folded:  # fold last, with the final statistics
            folded = fold_batchnorms(model, example)
        if config.channels_last:
            to_channels_last(model)
        ctx.set_restore_record(changes(before, model, config.channels_last))
        macs_after = count_macs(model, example)
        ctx.note("channels removed", f"{report.removed} of "
                 f"{sum(b for _, b, _ in report.widths)} in {len(report.widths)} groups")
        ctx.note("MAC reduction", f"{macs_before / max(1, macs_after):.2f}x")
        if folded:
            ctx.note("BatchNorms folded", len(folded))
        if report.frozen:
            ctx.note("kept by the engine", "; ".join(f"{n} x {r}" for r, n in
                                                       report.frozen.items()))
        if report.attributes:
            ctx.note("attributes updated", report.attributes)
        logger.info("prune.channel: %s", report.widths)
        return model

    @staticmethod
    def _prune_and_finetune(model: nn.Module, example: Any, sparsity: float,
                            options: dict[str, Any], config: ChannelPruneConfig, ctx: Context
                            ) -> PruneReport:
        """One shot or ``steps`` (with BatchNorm re-estimation and fine-tuning after each),
        or gradual (channels fade out during fine-tuning, removed at ``gradual_end``)."""
        has_train = ctx.data is not None and ctx.data.train is not None
        epochs = ctx.finetune_epochs if config.finetune and has_train else 0
        trains_after = epochs > 0 or (has_train and config.bn_recalibration > 0)
        gradients = config.importance in GRADIENT_CRITERIA
        gradual = config.schedule == "gradual" and epochs > 0
        pruner = ChannelPruner(
            model, example, sparsity=sparsity, steps=config.steps, adapter=ctx.adapter,
            batches=(lambda: list(_taylor_batches(ctx, config.taylor_batches)))
            if gradients else None, fold_bn=config.fold_bn and not trains_after, **options)
        lr = ctx.finetune_lr * config.finetune_lr_scale
        if gradual:
            masks = GradualChannelMasks(pruner, CubicSchedule(
                0.0, sparsity, end=config.gradual_end, steps=config.gradual_updates))
            ctx.finetune(model, epochs=epochs, teacher=ctx.teacher, lr=lr, callbacks=[masks])
            return masks.finish()
        if config.schedule == "gradual":
            ctx.note("schedule", "one shot: gradual pruning needs fine-tuning")
        report = PruneReport([])
        for _ in range(config.steps):
            report = pruner.step()
            if has_train and config.bn_recalibration:
                recalibrate_batchnorms(model, _input_batches(ctx, config.bn_recalibration),
                                       ctx.adapter)
            if epochs > 0:
                ctx.finetune(model, epochs=epochs / config.steps, teacher=ctx.teacher, lr=lr)
        return report

    @staticmethod
    def _search_ratio(model: nn.Module, example: Any, config: ChannelPruneConfig,
                      ctx: Context, options: dict[str, Any], macs: Any) -> float:
        """The uniform ratio that meets ``target_macs`` or ``target_latency``."""
        search = {**options, "importance": "l2" if config.importance in GRADIENT_CRITERIA
                  else config.importance}

        def prune(candidate: nn.Module, ratio: float) -> None:
            prune_channels(candidate, example, sparsity=ratio, fold_bn=config.fold_bn,
                           **search)
            if config.channels_last:
                to_channels_last(candidate)

        if config.target_latency is None:
            target, name, unit = macs, "target_macs", "MACs"

            def quantity(candidate: nn.Module) -> float:
                return float(count_macs(candidate, example))
        else:
            target, name, unit = Target.parse(config.target_latency), "target_latency", "ms"
            settings = TimingSettings(threads=ctx.timing.threads, rounds=3,
                                      round_seconds=0.05, warmup_seconds=0.05)

            def quantity(candidate: nn.Module) -> float:
                candidate.eval()
                return time_call(lambda: ctx.adapter.forward(candidate, example), ctx.device,
                                 settings)
        if target is None:  # pragma: no cover - apply only searches when a target is set
            raise ConfigError("no target_macs or target_latency to search for")
        originals: list[float] = []

        def measure(candidate: nn.Module) -> float:
            value = quantity(candidate)
            if candidate is model:
                originals.append(value)
            return value

        ratio = search_ratio(model, example, target, measure, prune, iterations=7)
        ctx.note(f"ratio found for {name}", round(ratio, 4))
        if originals:  # a bare number is absolute: "0.5" is 0.5 ms, not half the latency
            kind = "a reduction" if target.is_ratio else "an absolute value"
            fastest = min(originals)
            ctx.note(f"{name} limit", f"{target.limit(fastest):.4g} {unit} ({target}, "
                     f"{kind}; the original measured {fastest:.4g} {unit}"
                     + (f", the least of {len(originals)} timings)" if len(originals) > 1
                        else ")"))
        return ratio

    @staticmethod
    def _sensitivity_ratios(model: nn.Module, example: Any, config: ChannelPruneConfig,
                            ctx: Context, options: dict[str, Any], macs: Any
                            ) -> dict[str, float]:
        from sconce.plotting import save_png
        from sconce.sensitivity import plot_sensitivity
        from sconce_prune.channel.allocation import channel_ratios

        def evaluate(candidate: nn.Module) -> Any:
            return ctx.evaluate(candidate, split="val", max_samples=config.sensitivity_samples)

        allocation, sensitivity = channel_ratios(model, example, evaluate,
                                                 sparsity=config.sparsity, options=options,
                                                 target_macs=macs)
        title = (f"Channel-group sensitivity - chosen: {allocation.method}, "
                 f"{allocation.sparsity:.0%} overall (circles)")
        save_png(plot_sensitivity(sensitivity, chosen=allocation.ratios, title=title),
                 ctx.artifact_path("channel_sensitivity.png"))
        ctx.note("ratio allocation", f"{allocation.method} (validation accuracy with all "
                 f"groups pruned together: {allocation.accuracy:.2f}%)")
        ctx.note("per-group ratios", {k: round(v, 3) for k, v in allocation.ratios.items()})
        return allocation.ratios

    def restore(self, model: nn.Module, config: ChannelPruneConfig,
                record: dict[str, Any]) -> nn.Module:
        """Rebuild the pruned shapes on a fresh model of the original architecture."""
        return replay(model, record)
