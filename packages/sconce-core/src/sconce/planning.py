"""Automatic planning: the stages of a run without a recipe, chosen by measuring.

Given the run's constraints (with none, :data:`DEFAULT_MAX_ACCURACY_DROP`), :func:`plan_run`
picks a pruning and a quantization technique among the *installed* ones (by kind, through the
registry, in the preference order of :data:`PREFERENCES` or the model adapter's
``recipe_groups``) and sets their strength by measuring on the validation split:

1. the quantization stage's cost: it is applied to the original model and evaluated;
2. the size / MACs / latency targets: the strongest plan (most pruning, then quantization) is
   built and measured, and an unreachable target is a :class:`ConstraintError` naming what
   the installed techniques achieve, before any long work; otherwise the least pruning that
   meets the targets is found (:func:`sconce.budget.bisect`);
3. the pruning ratio: the largest whose candidate (pruned, briefly fine-tuned with
   distillation from the original) stays within what the budget leaves after quantization
   (:func:`sconce.budget.bisect`: it backs off when a candidate exceeds the budget and pushes
   further while budget is left). A candidate whose weights or loss become NaN or infinite is
   stopped and counts as over budget;
4. pushing further: a brief fine-tuning understates what the run's whole fine-tuning budget
   recovers, so the ratios above the one found are bisected again (``push_steps``
   candidates), each whole plan built as the run will build it (pruned, fine-tuned with the
   run's budget, quantized) and judged against the whole budget; the largest within it wins.

Every candidate tried is kept (:class:`Trial`: its measured accuracy, size, MACs) and the
report's notes explain the choice (:meth:`AutoPlan.notes`). The plan is plain data
(:meth:`AutoPlan.to_dict`), so a resumed run reuses it instead of planning again.

Example:
    >>> plan = AutoPlan([("prune.channel", {"sparsity": 0.5}), ("quant.int8", {})],
    ...                 budget=1.0, reasons=["pruning: 50% of channels"])
    >>> [stage.technique for stage in plan.recipe().stages]
    ['prune.channel', 'quant.int8']
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from sconce import distributed
from sconce.budget import bisect
from sconce.context import Context, StageNotes
from sconce.errors import ConfigError, SconceError
from sconce.masks import KeepZeros
from sconce.metrics.base import MetricUnavailable
from sconce.metrics.standard import MACs, Size
from sconce.metrics.timing import TimingSettings, time_call
from sconce.recipe import Constraints, Recipe, Stage
from sconce.runtime import seed_everything
from sconce.train import NonFiniteLoss, StopOnNonFinite

__all__ = ["DEFAULT_MAX_ACCURACY_DROP", "PREFERENCES", "AutoPlan", "ConstraintError", "Trial",
           "choose_techniques", "plan_run"]

logger = logging.getLogger(__name__)

DEFAULT_MAX_ACCURACY_DROP = 1.0
"""Accuracy points a run without a recipe or an accuracy constraint may lose."""
PREFERENCES: tuple[tuple[str, ...], ...] = (
    ("prune.channel", "prune.gmp", "prune.magnitude"),
    ("quant.int8", "quant.dynamic"),
)
"""The techniques the planner prefers, per group (pruning, quantization); any other
installed technique of the group's kind comes after them."""
GROUP_KINDS = ("prune", "quantize")
MAX_SPARSITY = 0.9
"""The most pruning the planner tries."""
FINETUNED_KINDS = ("prune", "sparsify", "search")


class ConstraintError(SconceError):
    """A constraint that no plan of the installed techniques meets (says what is achievable)."""


@dataclass
class Trial:
    """One candidate the planner measured.

    Attributes:
        technique: its technique, or ``"+".join`` of several.
        config: the strength tried (e.g. ``{"sparsity": 0.5}``).
        purpose: what the trial decided (``"accuracy"``, ``"targets"``, ``"quantization"``).
        accuracy: validation accuracy (None when not evaluated).
        drop: points lost against the original on validation.
        size_mib, macs, latency_ms: measured where the trial needed them.
        accepted: whether it met what it was tried for.
        note: why it was rejected or stopped.

    Example:
        >>> Trial("prune.channel", {"sparsity": 0.5}, "accuracy", 91.0, 0.4).describe()
        'prune.channel sparsity=0.5: val 91.00% (-0.40)'
    """

    technique: str
    config: dict[str, Any]
    purpose: str
    accuracy: float | None = None
    drop: float | None = None
    size_mib: float | None = None
    macs: float | None = None
    latency_ms: float | None = None
    accepted: bool = False
    note: str = ""

    def describe(self) -> str:
        """One line: strength, measured values, verdict."""
        strength = " ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                            for k, v in self.config.items())
        parts = []
        if self.accuracy is not None and self.drop is not None:
            parts.append(f"val {self.accuracy:.2f}% ({-self.drop:+.2f})")
        if self.size_mib is not None:
            parts.append(f"{self.size_mib:.4g} MiB")
        if self.macs is not None:
            parts.append(f"{self.macs / 1e6:.4g} MMACs")
        if self.latency_ms is not None:
            parts.append(f"{self.latency_ms:.4g} ms")
        if self.note:
            parts.append(self.note)
        return f"{self.technique} {strength}".strip() + ": " + ", ".join(parts)


@dataclass
class AutoPlan:
    """The stages the planner chose, why, and every candidate it measured.

    Attributes:
        stages: ``(technique, config)`` pairs, in order.
        budget: the run's accuracy budget in points (the constraint, or the default).
        reasons: one sentence per decision.
        trials: every candidate measured.

    Example:
        >>> AutoPlan.from_dict(AutoPlan([("quant.int8", {})], 1.0).to_dict()).stages
        [('quant.int8', {})]
    """

    stages: list[tuple[str, dict[str, Any]]]
    budget: float
    reasons: list[str] = field(default_factory=list)
    trials: list[Trial] = field(default_factory=list)

    def recipe(self) -> Recipe:
        """The plan as a recipe."""
        return Recipe(tuple(Stage(name, dict(config)) for name, config in self.stages))

    def technique_constraints(self) -> Constraints:
        """What the planned stages see as the run's constraints: the accuracy budget only
        (quantization keeps layers in float to hold it); the targets are met by the
        strengths the plan fixed, measured, so no stage searches them again."""
        return Constraints(max_accuracy_drop=self.budget)

    def notes(self) -> dict[str, str]:
        """What the report shows under the first stage: the plan and why."""
        notes = {"plan": " -> ".join(name for name, _ in self.stages) or "nothing"}
        for index, reason in enumerate(self.reasons, start=1):
            notes[f"plan reason {index}"] = reason
        for index, trial in enumerate(self.trials, start=1):
            notes[f"plan candidate {index} ({trial.purpose})"] = (
                trial.describe() + (" - accepted" if trial.accepted else " - rejected"))
        return notes

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able values."""
        return {"stages": [[name, config] for name, config in self.stages],
                "budget": self.budget, "reasons": list(self.reasons),
                "trials": [dataclasses.asdict(t) for t in self.trials]}

    @classmethod
    def from_dict(cls, value: Mapping[str, Any]) -> AutoPlan:
        """The plan :meth:`to_dict` wrote."""
        return cls([(str(name), dict(config)) for name, config in value["stages"]],
                   float(value["budget"]), list(value.get("reasons", [])),
                   [Trial(**t) for t in value.get("trials", [])])


def choose_techniques(installed: Mapping[str, Any],
                      groups: Sequence[Sequence[str]] | None = None) -> list[str]:
    """One installed technique per group: the first preferred one, else any other installed
    technique of the group's kind (``prune`` needs a ``sparsity`` config field).

    Example:
        >>> from types import SimpleNamespace as T
        >>> from sconce.config import PruneConfig
        >>> choose_techniques({"acme.prune": T(kind="prune", Config=PruneConfig)})
        ['acme.prune']
    """
    chosen = []
    for index, kind in enumerate(GROUP_KINDS):
        preferred = [*(groups[index] if groups and index < len(groups) else ()),
                     *PREFERENCES[index]]
        others = sorted(name for name, technique in installed.items()
                        if getattr(technique, "kind", None) == kind
                        and (kind != "prune" or _has_field(technique, "sparsity")))
        name = next((n for n in [*preferred, *others] if n in installed), None)
        if name is not None:
            chosen.append(name)
    return chosen


def _has_field(technique: Any, name: str) -> bool:
    config = getattr(technique, "Config", None)
    return dataclasses.is_dataclass(config) and any(
        f.name == name for f in dataclasses.fields(config))


@dataclass
class _Planner:
    """The measuring behind :func:`plan_run` (one run's model, context and techniques)."""

    model: nn.Module
    ctx: Context
    techniques: Mapping[str, Any]
    constraints: Constraints
    probe_epochs: float
    steps: int
    push_steps: int = 0
    trials: list[Trial] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    reference: float = math.nan
    base: Trial = field(default_factory=lambda: Trial("original", {}, "reference"))

    # --- building candidates ---------------------------------------------------------------
    def probe_context(self, epochs: float) -> Context:
        """A context for a candidate: its own notes, a short fine-tuning budget, no progress
        bars, a stop on NaN losses."""
        ctx = self.ctx
        return dataclasses.replace(ctx, stage=StageNotes(), finetune_epochs=epochs,
                                   progress=False, work_dir=ctx.work_dir / "planning",
                                   teacher=ctx.teacher, guards=(StopOnNonFinite(),))

    def build(self, stages: Sequence[tuple[str, dict[str, Any]]], epochs: float
              ) -> nn.Module:
        """Apply ``stages`` to a copy of the model, each fine-tuned as the pipeline would
        (``epochs``); raises :class:`NonFiniteLoss` for NaN or infinite weights or losses."""
        seed_everything(self.ctx.seed)
        candidate = copy.deepcopy(self.model)
        for name, values in stages:
            technique = self.techniques[name]
            config = technique.Config.from_dict(values)
            probe = self.probe_context(epochs)
            candidate = technique.apply(candidate, config, probe)
            wants = bool(getattr(technique, "finetune_after", technique.kind in FINETUNED_KINDS))
            if wants and epochs > 0 and not probe.stage.finetuned and probe.data is not None \
                    and probe.data.train is not None:
                keeper = KeepZeros.of(candidate)
                probe.finetune(candidate, teacher=probe.teacher,
                               callbacks=[keeper] if keeper else [])
            _check_finite(candidate)
        return candidate.eval()

    def evaluate(self, trial: Trial, model: nn.Module) -> Trial:
        result = self.ctx.evaluate(model, "val")
        if not math.isfinite(result.loss):
            trial.note = f"stopped: the validation loss is {result.loss}"
            return trial
        trial.accuracy, trial.drop = result.accuracy, self.reference - result.accuracy
        return trial

    def measure(self, trial: Trial, model: nn.Module, macs_of: nn.Module | None = None
                ) -> Trial:
        """Size (of ``model``), MACs (of ``macs_of``: quantization keeps the count) and,
        with a latency target, batch-1 latency."""
        trial.size_mib = Size().measure(model, self.ctx)
        try:
            trial.macs = MACs().measure(macs_of if macs_of is not None else model, self.ctx)
        except MetricUnavailable as exc:
            logger.info("planning: MACs not counted (%s)", exc)
        if self.constraints.target_latency is not None:
            trial.latency_ms = self.latency(model)
        return trial

    def latency(self, model: nn.Module) -> float:
        example = self.ctx.adapter.to_device(self.ctx.example_inputs(1), self.ctx.device)
        settings = TimingSettings(threads=self.ctx.timing.threads, rounds=3,
                                  round_seconds=0.05, warmup_seconds=0.05)
        model.eval()
        measured = math.nan
        if distributed.is_main_process():  # under torchrun rank 0 times, alone, for every rank
            with torch.no_grad():
                measured = time_call(lambda: self.ctx.adapter.forward(model, example),
                                     self.ctx.device, settings)
        return distributed.from_rank0(measured, self.ctx.device)

    def run_trial(self, stages: Sequence[tuple[str, dict[str, Any]]], purpose: str,
                  epochs: float, *, evaluate: bool = True, measure: bool = False) -> Trial:
        """Build, evaluate and/or measure one candidate; a NaN stops it with a note."""
        trial = Trial("+".join(name for name, _ in stages),
                      {k: v for _, config in stages for k, v in config.items()}, purpose)
        try:
            model = self.build(stages, epochs)
        except NonFiniteLoss as exc:
            trial.note = f"stopped: {exc}"
            self.trials.append(trial)
            return trial
        if evaluate:
            self.evaluate(trial, model)
        if measure and not trial.note:
            # quantization keeps the MAC count: count it on the float model before it
            pruned = [s for s in stages if self.techniques[s[0]].kind != "quantize"]
            float_model = (model if len(pruned) == len(stages)
                           else self.build(pruned, 0.0) if pruned else self.model)
            self.measure(trial, model, float_model)
        self.trials.append(trial)
        return trial

    # --- deciding --------------------------------------------------------------------------
    def targets_met(self, trial: Trial) -> bool:
        limits = self.constraints
        checks = ((limits.target_size_mib, trial.size_mib, self.base.size_mib),
                  (limits.target_macs, trial.macs, self.base.macs),
                  (limits.target_latency, trial.latency_ms, self.base.latency_ms))
        return not trial.note and all(
            value is not None and original is not None and value <= target.limit(original)
            for target, value, original in checks if target is not None)

    def describe_targets(self) -> str:
        limits = self.constraints
        return ", ".join(f"{name}={target}" for name, target in (
            ("target_size_mib", limits.target_size_mib), ("target_macs", limits.target_macs),
            ("target_latency", limits.target_latency)) if target is not None)

    def plan(self, prune: str | None, quantize: str | None, budget: float) -> AutoPlan:
        self.reference = self.ctx.evaluate(self.model, "val").accuracy
        self.base = self.measure(Trial("original", {}, "reference", self.reference, 0.0),
                                 self.model)
        has_targets = any(t is not None for t in (self.constraints.target_size_mib,
                                                  self.constraints.target_macs,
                                                  self.constraints.target_latency))
        tail: list[tuple[str, dict[str, Any]]] = []
        left = budget
        if quantize is not None:
            trial = self.run_trial([(quantize, {})], "quantization", 0.0)
            trial.accepted = trial.drop is not None and trial.drop <= budget
            tail = [(quantize, {})]
            if trial.drop is None:
                tail, left = [], budget
                self.reasons.append(f"{quantize}: left out ({trial.note})")
            else:
                left = max(0.0, budget - max(0.0, trial.drop))
                self.reasons.append(
                    f"{quantize} after pruning: it costs {trial.drop:.2f} points alone "
                    f"(validation), leaving {left:.2f} of the {budget:g}-point budget for "
                    "pruning" + ("" if trial.accepted else "; over budget alone, so it keeps "
                                 "the most sensitive layers in float"))
        low = 0.0
        if has_targets:
            low = self.least_pruning_for_targets(prune, tail)
        if prune is None:
            self.reasons.append("no pruning technique is installed (pip install sconce-prune)")
            return AutoPlan(tail, budget, self.reasons, self.trials)
        sparsity = self.search_pruning(prune, low, left)
        if sparsity is None:
            if has_targets:
                raise ConstraintError(self.over_budget_message(prune, low, budget))
            self.reasons.append(f"{prune}: left out (even the lightest candidate lost more "
                                f"than the {left:.2f} points left)")
            return AutoPlan(tail, budget, self.reasons, self.trials)
        sparsity = self.push_pruning(prune, sparsity, tail, budget)
        return AutoPlan([(prune, {"sparsity": round(sparsity, 4)}), *tail], budget,
                        self.reasons, self.trials)

    def least_pruning_for_targets(self, prune: str | None, tail: list[tuple[str, dict[str, Any]]]
                                  ) -> float:
        """The smallest pruning ratio whose plan meets the size/MACs/latency targets (measured,
        without fine-tuning: it does not change them); a ConstraintError when even the
        strongest plan does not."""
        def strongest(ratio: float) -> list[tuple[str, dict[str, Any]]]:
            return ([(prune, {"sparsity": ratio})] if prune is not None and ratio > 0 else []
                    ) + tail

        top = MAX_SPARSITY if prune is not None else 0.0
        trial = self.run_trial(strongest(top), "targets", 0.0, evaluate=False, measure=True)
        if not self.targets_met(trial):
            raise ConstraintError(
                f"no plan of the installed techniques meets {self.describe_targets()}: the "
                f"strongest ({' + '.join(n for n, _ in strongest(top)) or 'none'}"
                f"{f' at {top:.0%}' if prune is not None else ''}) measures "
                f"{self.achieved(trial)} (original {self.achieved(self.base)}); relax the "
                "target" + ("" if prune is not None else " or pip install sconce-prune"))
        trial.accepted = True
        if prune is None:
            return 0.0
        if tail:
            quantized = self.run_trial(tail, "targets", 0.0, evaluate=False, measure=True)
            quantized.accepted = self.targets_met(quantized)
            if quantized.accepted:
                self.reasons.append(f"targets ({self.describe_targets()}) met by "
                                    f"{tail[0][0]} alone")
                return 0.0

        def probe(ratio: float) -> Trial:
            found = self.run_trial(strongest(ratio), "targets", 0.0, evaluate=False,
                                   measure=True)
            found.accepted = self.targets_met(found)
            return found

        least = bisect(probe, lambda t: t.accepted, 0.0, top, want="smallest",
                       steps=self.steps)
        value = least.value if least.value is not None else top
        self.reasons.append(f"targets ({self.describe_targets()}) need at least {value:.0%} "
                            f"pruned ({prune}, measured)")
        return value

    def search_pruning(self, prune: str, low: float, left: float) -> float | None:
        """The largest ratio in ``[low, MAX_SPARSITY]`` whose briefly fine-tuned candidate
        stays within ``left`` points; None when even ``low`` (or the smallest tried) does
        not."""
        def probe(ratio: float) -> Trial:
            trial = self.run_trial([(prune, {"sparsity": round(ratio, 4)})], "accuracy",
                                   self.probe_epochs)
            trial.accepted = trial.drop is not None and trial.drop <= left
            return trial

        if low > 0:
            first = probe(low)
            if not first.accepted:
                return None
        found = bisect(probe, lambda t: t.accepted, low, MAX_SPARSITY, steps=self.steps)
        if found.value is None:
            return low if low > 0 else None
        rejected = ", ".join(f"{t.config['sparsity']:.0%}" for t in self.trials
                             if t.purpose == "accuracy" and not t.accepted)
        self.reasons.append(
            f"{prune} at {found.value:.0%}: the largest ratio tried whose candidate "
            f"(fine-tuned {self.probe_epochs:g} epoch(s), distilled) stays within "
            f"{left:.2f} points on validation"
            + (f"; backed off from {rejected}" if rejected
               else "; pushed to the most the planner tries"))
        return float(found.value)

    def push_pruning(self, prune: str, found: float, tail: list[tuple[str, dict[str, Any]]],
                     budget: float) -> float:
        """The largest ratio above ``found`` whose whole plan, built as the run will build it
        (pruned and fine-tuned with the run's budget, then ``tail``, the quantization),
        stays within ``budget`` points (``push_steps`` candidates, bisected up to
        :data:`MAX_SPARSITY`); ``found`` when none does or the run's budget is no longer
        than a probe's. The whole plan is judged, not the pruning against what quantizing the
        original left: what the quantization stage does with the rest of the budget (all
        int8, or layers kept in float) is part of what is measured."""
        full = self.ctx.finetune_epochs
        if self.push_steps <= 0 or full <= self.probe_epochs or found >= MAX_SPARSITY:
            return found

        def probe(ratio: float) -> Trial:
            trial = self.run_trial([(prune, {"sparsity": round(ratio, 4)}), *tail],
                                   "whole plan, full fine-tuning", full)
            trial.accepted = trial.drop is not None and trial.drop <= budget
            return trial

        pushed = bisect(probe, lambda t: t.accepted, found, MAX_SPARSITY, steps=self.push_steps)
        plan = " + ".join([prune, *(name for name, _ in tail)])
        tried = ", ".join(
            f"{p.value:.0%} " + (f"({-p.result.drop:+.2f})" if p.result.drop is not None
                                 else f"({p.result.note})")
            for p in pushed.probes)
        if pushed.value is None:
            self.reasons.append(f"{prune}: no larger ratio kept {plan} within {budget:g} "
                                f"points with the run's full fine-tuning ({full:g} epoch(s)); "
                                f"tried {tried}")
            return found
        self.reasons.append(f"{prune} pushed to {pushed.value:.0%}: {plan} built as the run "
                            f"will build it (fine-tuned {full:g} epoch(s), distilled) stays "
                            f"within {budget:g} points on validation; tried {tried}")
        return float(pushed.value)

    def achieved(self, trial: Trial) -> str:
        parts = []
        if self.constraints.target_size_mib is not None and trial.size_mib is not None:
            parts.append(f"{trial.size_mib:.4g} MiB")
        if self.constraints.target_macs is not None and trial.macs is not None:
            parts.append(f"{trial.macs:.4g} MACs")
        if self.constraints.target_latency is not None and trial.latency_ms is not None:
            parts.append(f"{trial.latency_ms:.4g} ms")
        return ", ".join(parts) or "nothing measurable"

    def over_budget_message(self, prune: str, low: float, budget: float) -> str:
        lightest = next((t for t in self.trials if t.purpose == "accuracy"), None)
        cost = (f"loses {lightest.drop:.2f} points" if lightest and lightest.drop is not None
                else (lightest.note if lightest else "cannot be built"))
        return (f"{self.describe_targets()} cannot be met within max_accuracy_drop={budget:g}: "
                f"the least pruning that meets it ({prune} at {low:.0%}, measured) {cost} on "
                "validation after a short fine-tune; relax a constraint")


def _check_finite(model: nn.Module) -> None:
    for name, value in model.state_dict().items():
        if isinstance(value, torch.Tensor) and value.is_floating_point() \
                and not bool(torch.isfinite(value).all()):
            raise NonFiniteLoss(f"{name} holds NaN or infinite values")


def plan_run(
    model: nn.Module,
    ctx: Context,
    techniques: Mapping[str, Any],
    constraints: Constraints | None = None,
    *,
    groups: Sequence[Sequence[str]] | None = None,
    probe_epochs: float | None = None,
    steps: int = 5,
    push_steps: int = 3,
) -> AutoPlan:
    """Choose the stages and their strength for ``model`` by measuring (module docstring).

    Args:
        model: the run's working copy (not modified: candidates are copies).
        ctx: the run's context (data with a validation split, teacher, work folder).
        techniques: the installed techniques by name (the registry's).
        constraints: the run's; without ``max_accuracy_drop`` the budget is
            :data:`DEFAULT_MAX_ACCURACY_DROP`.
        groups: preferred technique names per group (the adapter's ``recipe_groups``).
        probe_epochs: fine-tuning of each pruning candidate; default a quarter of the
            run's budget, at most 1 epoch.
        steps: candidates per bisection.
        push_steps: candidates fine-tuned with the run's whole budget when pushing past the
            ratio the brief candidates found (0 turns the push off).

    Raises:
        ConfigError: no pruning or quantization technique is installed.
        ConstraintError: a target that no plan meets, naming what was measured.

    Example:
        >>> plan = plan_run(model, ctx, registry().techniques, Constraints(max_accuracy_drop=0.5))
        ... # doctest: +SKIP
        >>> plan.stages  # doctest: +SKIP
        [('prune.channel', {'sparsity': 0.5625}), ('quant.int8', {})]
    """
    names = choose_techniques(techniques, groups)
    if not names:
        raise ConfigError("no compression technique is installed to plan with; "
                          "pip install sconce-prune sconce-quant, or give a recipe")
    limits = constraints or Constraints()
    budget = (limits.max_accuracy_drop if limits.max_accuracy_drop is not None
              else DEFAULT_MAX_ACCURACY_DROP)
    if ctx.data is None or (ctx.data.val is None and ctx.data.test is None):
        raise ConfigError("planning needs validation data to measure candidates on; give "
                          "data with a 'val' or 'test' split, or a recipe")
    epochs = probe_epochs if probe_epochs is not None else min(1.0, ctx.finetune_epochs / 4)
    prune = next((n for n in names if techniques[n].kind == "prune"), None)
    quantize = next((n for n in names if techniques[n].kind == "quantize"), None)
    planner = _Planner(model, ctx, techniques, limits, epochs, steps, push_steps)
    plan = planner.plan(prune, quantize, budget)
    if limits.max_accuracy_drop is None:
        plan.reasons.insert(0, f"no accuracy constraint: the default budget of {budget:g} "
                               "point(s) applies")
    logger.info("planned: %s", " -> ".join(f"{n} {c}" for n, c in plan.stages))
    return plan
