"""``sconce.compress``: copy → baseline → for each stage: apply → fine-tune → measure → report.

Each finished stage is checkpointed in the work folder (written atomically), so a run given
``resume=True`` restarts after the last finished stage. The caller's model is never modified.

Memory: the pipeline holds one working copy of the model besides the caller's. Each stage's
technique receives that copy (its own: nothing else references it) and the previous stages
live in their checkpoints; the teacher (a frozen copy of the caller's model, for distillation
and accuracy budgets) is built on first use within a stage and released when the stage ends.

Example:
    >>> import sconce
    >>> result = sconce.compress(sconce.models.demo_cnn(in_channels=1), "digits",
    ...                          recipe=["prune.gmp"], finetune_epochs=1)  # doctest: +SKIP
    >>> result.report.value("Pruned", "sparsity")  # doctest: +SKIP
    50.0
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sconce import distributed
from sconce.adapter import ModelAdapter
from sconce.api import context, get_adapter, get_data, resolve_metrics
from sconce.context import Context, StageNotes
from sconce.data import Data
from sconce.errors import DataError, ModelError, TechniqueError
from sconce.masks import KeepZeros
from sconce.metrics.base import Metric
from sconce.metrics.measure import measure_with_context
from sconce.metrics.timing import TimingSettings
from sconce.options import CompressOptions
from sconce.plugins import plugin_manager, registry
from sconce.recipe import Constraints, Recipe, Stage, read_recipe
from sconce.report import MetricInfo, Report, StageResult, stage_title
from sconce.runtime import resolve_device, seed_everything
from sconce.serialization import Architecture, StageRecord, rebuild, save_model
from sconce.storage import (
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    replace_dir,
    staging_dir,
)
from sconce.technique import check_restorable, make_config, structure_of, validate_technique

logger = logging.getLogger(__name__)

# The default recipe when none is given: the first installed technique of each group.
DEFAULT_RECIPE_GROUPS: tuple[tuple[str, ...], ...] = (
    ("prune.channel", "prune.gmp", "prune.magnitude"),
    ("quant.int8", "quant.dynamic"),
)
FINETUNED_KINDS = ("prune", "sparsify", "search")
"""Kinds whose stages the pipeline fine-tunes (unless the technique fine-tuned itself)."""


@dataclass
class PlannedStage:
    """A recipe stage resolved to its technique and validated config."""

    technique: Any
    config: Any
    label: str

    @property
    def key(self) -> dict[str, Any]:
        return {"technique": self.technique.name, "config": self.config.to_dict()}


@dataclass
class CompressionResult:
    """What :func:`compress` returns: the compressed model and the report.

    Attributes:
        model: the compressed model (eval mode).
        report: measured metrics per stage.
        architecture: how :func:`sconce.load` rebuilds the model.
        work_dir: the folder with per-stage checkpoints.
    """

    model: nn.Module
    report: Report
    architecture: Architecture
    work_dir: Path
    example_inputs: Any = None
    artifacts: list[Path] = field(default_factory=list)

    def save(self, out: str | Path, *, model_spec: str | None = None,
             model_kwargs: Mapping[str, Any] | None = None) -> Path:
        """Write the model (``model.pt`` + ``model.json``), ``report.json``, ``report.md``,
        ``report.png`` and the stages' plots to ``out``; every file atomically.

        Args:
            out: the folder.
            model_spec, model_kwargs: how :func:`sconce.load` rebuilds the original
                architecture without the model object: a registered model name (or
                ``pkg.module:factory``) and its keyword arguments (the CLI fills these).
                Without them the folder also holds the model exported with ``torch.export``
                (``model.pt2``), which ``sconce.load(out)`` returns.

        Example:
            >>> result.save("out/", model_spec="vgg", model_kwargs={"num_classes": 10})
            ... # doctest: +SKIP
            PosixPath('out')
        """
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        architecture = self.architecture
        if model_spec is not None:
            architecture = Architecture(model_spec, dict(model_kwargs or {}),
                                        list(architecture.stages))
        save_model(self.model, out, architecture=architecture,
                   example_inputs=self.example_inputs)
        for artifact in self.artifacts:
            if artifact.is_file():
                target = out / "artifacts" / artifact.name
                target.parent.mkdir(parents=True, exist_ok=True)
                _atomic_copy(artifact, target)
        atomic_write_json(out / "report.json", self.report.to_dict())
        atomic_write_text(out / "report.md", self.report.to_markdown())
        self.report.plot(out / "report.png")
        return out


def _atomic_copy(source: Path, target: Path) -> None:
    atomic_write_bytes(target, source.read_bytes())


def default_recipe(groups: Sequence[Sequence[str]] | None = None) -> Recipe:
    """The first installed technique of each group (:data:`DEFAULT_RECIPE_GROUPS` unless the
    model's adapter names its own, ``ModelAdapter.recipe_groups``).

    Example:
        >>> default_recipe()  # doctest: +SKIP
        Recipe(stages=(Stage(technique='prune.channel', ...), Stage(technique='quant.int8', ...)))
    """
    installed = registry().techniques
    stages = []
    for group in groups or DEFAULT_RECIPE_GROUPS:
        chosen = next((name for name in group if name in installed), None)
        if chosen is not None:
            stages.append(Stage(chosen))
    return Recipe(tuple(stages))


def plan(recipe: Recipe) -> list[PlannedStage]:
    """Resolve every stage's technique and validate its config before any work is done.

    Example:
        >>> plan(Recipe.from_value([("prune.gmp", {"sparsity": 0.8})]))[0].config.sparsity
        ... # doctest: +SKIP
        0.8
    """
    planned = []
    for stage in recipe.stages:
        technique = registry().lookup(
            "techniques", stage.technique, "see `sconce techniques`; plugins add more")
        validate_technique(technique)
        planned.append(PlannedStage(technique, make_config(technique, stage.config), stage.label))
    return planned


def check_model_runs(model: nn.Module, data: Data, adapter: ModelAdapter, device: torch.device
                     ) -> None:
    """Run the model on two real inputs; a shape mismatch becomes a clear DataError."""
    inputs = adapter.to_device(data.example_inputs(2), device)
    shape = tuple(inputs.shape) if isinstance(inputs, torch.Tensor) else "several inputs"
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            outputs = adapter.forward(model, inputs)
    except Exception as exc:
        first = (str(exc).splitlines() or [""])[0]
        raise DataError(
            f"the model cannot run on inputs of shape {shape} from the data ({first}); "
            "give a model built for this data's input shape"
        ) from None
    finally:
        model.train(was_training)
    try:
        logits = adapter.logits(outputs)
    except Exception:
        return
    if (data.num_classes and isinstance(logits, torch.Tensor) and logits.dim() == 2
            and logits.shape[1] != data.num_classes):
        raise DataError(
            f"the model outputs {logits.shape[1]} classes but the data has {data.num_classes}; "
            "give a model with a matching output layer"
        )


def check_constraints(constraints: Constraints, base: Mapping[str, float | None],
                      final: Mapping[str, float | None]) -> list[str]:
    """Which constraints the final model breaks, as sentences (empty when all hold).

    Example:
        >>> check_constraints(Constraints(max_accuracy_drop=0.5),
        ...                   {"accuracy": 90.0}, {"accuracy": 89.0})
        ['accuracy dropped 1.00 points (allowed 0.50)']
    """
    broken = []
    base_accuracy, final_accuracy = base.get("accuracy"), final.get("accuracy")
    if constraints.max_accuracy_drop is not None and base_accuracy is not None \
            and final_accuracy is not None:
        drop = base_accuracy - final_accuracy
        if drop > constraints.max_accuracy_drop + 1e-9:
            broken.append(f"accuracy dropped {drop:.2f} points "
                          f"(allowed {constraints.max_accuracy_drop:.2f})")
    for name, metric, unit in (("target_latency", "latency", "ms/sample"),
                               ("target_size_mib", "size", "MiB"),
                               ("target_macs", "macs", "MACs")):
        target = getattr(constraints, name)
        original, value = base.get(metric), final.get(metric)
        if target is None or original is None or value is None:
            continue
        limit = target.limit(original)
        if value > limit:
            broken.append(f"{metric} is {value:.4g} {unit} (target {limit:.4g})")
    return broken


def _fingerprint(model: nn.Module, planned: Sequence[PlannedStage], settings: dict[str, Any]
                 ) -> list[str]:
    """One hash per stage prefix: a resumed run reuses stage k only if everything before
    and including it is the same."""
    shapes = sorted((k, tuple(v.shape), str(v.dtype)) for k, v in model.state_dict().items())
    head = json.dumps({"model": shapes, "settings": settings}, sort_keys=True, default=str)
    hashes, running = [], hashlib.sha256(head.encode())
    for stage in planned:
        running.update(json.dumps(stage.key, sort_keys=True, default=str).encode())
        hashes.append(running.copy().hexdigest()[:16])
    return hashes


def _stage_dir(work_dir: Path, index: int, name: str) -> Path:
    return work_dir / "stages" / f"{index:02d}-{name.replace('.', '-')}"


def compress(
    model: nn.Module,
    data: Data | Mapping[str, Any] | str,
    recipe: Recipe | Sequence[Any] | str | Path | None = None,
    constraints: Constraints | Mapping[str, Any] | None = None,
    **options: Any,
) -> CompressionResult:
    """Compress ``model`` on ``data`` and measure every stage.

    Args:
        model: never modified; the pipeline works on its own copy.
        data: a :class:`sconce.Data`, a dict of loaders, or a registered dataset name.
        recipe: stages (names or ``(name, config)``), a :class:`Recipe`, a recipe file
            (``"recipe.toml"`` or a ``Path``: its stages, ``[constraints]`` and ``[options]``),
            or None for the default recipe (the best installed pruning, then int8).
        constraints: checked on the final model; broken ones are listed in the report.
            They override the recipe file's.
        **options: see :class:`sconce.options.CompressOptions` (``finetune_epochs``,
            ``finetune_lr``, ``distill``, ``device``, ``seed``, ``out``, ``work_dir``,
            ``resume``, ``metrics``, ``adapter``, ``timing``, ``progress``); they override the
            recipe file's ``[options]``. An unknown option is a one-line ConfigError.

    Returns:
        A :class:`CompressionResult`.

    Example:
        >>> sconce.compress(model, "digits", "recipe.toml", finetune_epochs=0)  # doctest: +SKIP
        CompressionResult(model=..., report=..., ...)
    """
    if not isinstance(model, nn.Module):
        raise ModelError(f"model must be a torch nn.Module, got {type(model).__name__}")
    resolved, file_constraints, file_options = read_recipe(recipe)
    opts = CompressOptions.from_dict({**file_options, **options})
    resolved_data = get_data(data)
    limits = Constraints.from_value(constraints) if constraints is not None else file_constraints
    adapter = get_adapter(model, opts.adapter)  # before the recipe: it may suggest one
    nothing_installed = False
    if not resolved.stages:
        resolved = default_recipe(adapter.recipe_groups)
        nothing_installed = not resolved.stages
    planned = plan(resolved)

    seed_everything(opts.seed)
    device = resolve_device(opts.device)
    working = _copy_of(model, device)
    check_model_runs(working, resolved_data, adapter, device)
    if nothing_installed:
        logger.warning("no compression technique is installed; the report shows the "
                       "original model only (pip install sconce-prune sconce-quant)")

    out = Path(opts.out) if opts.out is not None else None
    work_dir = Path(opts.work_dir if opts.work_dir is not None else (
        out / "work" if out is not None else tempfile.mkdtemp(prefix="sconce-")))
    ctx = context(
        resolved_data, adapter=adapter, device=device, seed=opts.seed, work_dir=work_dir,
        finetune_epochs=opts.finetune_epochs, finetune_lr=opts.finetune_lr,
        constraints=limits, timing=opts.timing or TimingSettings(), progress=opts.progress,
        teacher_loader=(lambda: _frozen_copy(model, device)) if opts.distill else None,
    )
    metric_objects = resolve_metrics(opts.metrics, have_data=True)
    hook = plugin_manager().hook
    settings = {"seed": opts.seed, "finetune_epochs": opts.finetune_epochs,
                "finetune_lr": opts.finetune_lr, "distill": opts.distill,
                "data": resolved_data.name, "device": device.type}
    fingerprints = _fingerprint(working, planned, settings)

    baseline = measure_with_context(working, ctx, metric_objects)
    report = Report(
        metrics=[MetricInfo.of(m, baseline.labels.get(m.name)) for m in metric_objects],
        stages=[StageResult("Original", values=baseline.values,
                            notes={**ctx.stage.notes, **baseline.notes})],
        run={"data": resolved_data.name or "custom", "device": device.type,
             "threads": ctx.timing.threads, "throughput_batch": ctx.timing.batch_size,
             "seed": opts.seed, "finetune_epochs": opts.finetune_epochs,
             "torch": torch.__version__},
    )
    hook.sconce_stage_finished(stage=report.stages[0], model=working, metrics=baseline.values)
    architecture = Architecture()
    artifacts: list[Path] = []
    current = working
    del working  # the stages below hand this one copy on; nothing else may keep it alive

    for index, stage in enumerate(planned, start=1):
        folder = _stage_dir(work_dir, index, stage.technique.name)
        title = stage_title(stage.technique.kind, [s.title for s in report.stages])
        if opts.resume and _finished(folder, fingerprints[index - 1]):
            del current  # the stage's checkpoint replaces it
            current, result, record = _restore_stage(folder, lambda: _copy_of(model, device),
                                                     device)
            ctx.adapter = get_adapter(current, opts.adapter)
            result.title = title
            logger.info("resumed: stage %d (%s) reused from %s", index, stage.label, folder)
        else:
            current, result, record = _run_stage(current, stage, ctx, title, metric_objects,
                                                 opts.adapter)
            architecture_so_far = Architecture(stages=[*architecture.stages, record])
            if distributed.is_main_process():
                _checkpoint(folder, current, result, architecture_so_far, fingerprints[index - 1])
        ctx.release_teacher()
        architecture.stages.append(record)
        artifacts += [Path(a) for a in result.artifacts]
        result.artifacts = [f"artifacts/{Path(a).name}" for a in result.artifacts]
        report.stages.append(result)
        hook.sconce_stage_finished(stage=result, model=current, metrics=result.values)

    if limits is not None and not limits.is_empty():
        broken = check_constraints(limits, report.stages[0].values, report.stages[-1].values)
        report.run["constraints"] = limits.to_dict()
        report.stages[-1].notes["constraints"] = "; ".join(broken) if broken else "all met"
    report.drop_inapplicable_metrics()
    current.eval()
    compressed = CompressionResult(model=current, report=report, architecture=architecture,
                                   work_dir=work_dir, example_inputs=ctx.example_inputs(1),
                                   artifacts=artifacts)
    if out is not None and distributed.is_main_process():
        compressed.save(out)
    return compressed


def _copy_of(model: nn.Module, device: torch.device) -> nn.Module:
    """The pipeline's own copy of the caller's model, on ``device``."""
    try:
        return copy.deepcopy(model).to(device)
    except Exception as exc:
        raise ModelError(f"the model cannot be copied ({exc}); compress needs a deep-copyable "
                         "module so that yours is never modified") from None


def _frozen_copy(model: nn.Module, device: torch.device) -> nn.Module:
    """The teacher: a copy of the caller's (unmodified) model, in eval mode, without grads."""
    teacher = _copy_of(model, device).eval()
    teacher.requires_grad_(False)
    return teacher


def _run_stage(current: nn.Module, stage: PlannedStage, ctx: Context, title: str,
               metrics: Sequence[Metric], given_adapter: ModelAdapter | None = None,
               ) -> tuple[nn.Module, StageResult, StageRecord]:
    ctx.stage = StageNotes()
    technique, config = stage.technique, stage.config
    logger.info("stage %s: applying %s %s", title, technique.name, config.to_dict())
    started = time.perf_counter()
    before = structure_of(current)
    compressed = technique.apply(current, config, ctx)
    if not isinstance(compressed, nn.Module):
        raise TechniqueError(f"technique {technique.name!r} returned "
                             f"{type(compressed).__name__} instead of an nn.Module")
    # a stage may change how the model runs (an ANN converted into a spiking network)
    ctx.adapter = get_adapter(compressed, given_adapter)
    check_restorable(technique, before, structure_of(compressed))
    if technique.kind in FINETUNED_KINDS and not ctx.stage.finetuned \
            and ctx.finetune_epochs > 0 and ctx.data is not None and ctx.data.train is not None:
        keeper = KeepZeros.of(compressed)
        ctx.finetune(compressed, teacher=ctx.teacher, callbacks=[keeper] if keeper else [])
    seconds = time.perf_counter() - started
    measured = measure_with_context(compressed, ctx, metrics)
    notes = {**ctx.stage.notes, **{f"{k} not measured": v for k, v in measured.notes.items()}}
    if ctx.stage.finetuned:
        notes.setdefault("fine-tuned", f"{ctx.finetune_epochs:g} epoch(s)"
                         + (", distilled from the original" if ctx.teacher_loader is not None
                            else ""))
    result = StageResult(title, technique=technique.name, kind=technique.kind,
                         config=config.to_dict(), values=measured.values, notes=notes,
                         seconds=round(seconds, 3),
                         artifacts=[str(p) for p in ctx.stage.artifacts])
    record = StageRecord(technique.name, config.to_dict(), ctx.stage.restore_record)
    return compressed.eval(), result, record


def _checkpoint(folder: Path, model: nn.Module, result: StageResult,
                architecture: Architecture, fingerprint: str) -> None:
    staging = staging_dir(folder)
    try:
        save_model(model, staging, architecture=architecture)
        atomic_write_json(staging / "stage.json", {
            "fingerprint": fingerprint, "result": Report(stages=[result]).to_dict()["stages"][0],
        })
        replace_dir(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _finished(folder: Path, fingerprint: str) -> bool:
    marker = folder / "stage.json"
    if not marker.is_file():
        return False
    try:
        return json.loads(marker.read_text("utf-8")).get("fingerprint") == fingerprint
    except json.JSONDecodeError:
        return False


def _restore_stage(folder: Path, original: Callable[[], nn.Module], device: torch.device
                   ) -> tuple[nn.Module, StageResult, StageRecord]:
    saved = json.loads((folder / "stage.json").read_text("utf-8"))
    description = json.loads((folder / "model.json").read_text("utf-8"))
    stages = Architecture.from_dict(description).stages
    model = rebuild(original(), stages, registry().techniques)
    model.load_state_dict(torch.load(folder / "model.pt", map_location="cpu", weights_only=True))
    result = StageResult.from_dict(saved["result"])
    return model.to(device).eval(), result, stages[-1]
