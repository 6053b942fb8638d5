"""``sconce.compress``: copy → baseline → for each stage: apply → fine-tune → measure → report.

Each finished stage is checkpointed in the work folder (written atomically), so a run given
``resume=True`` restarts after the last finished stage. The caller's model is never modified.

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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sconce import distributed
from sconce.adapter import ModelAdapter, get_adapter
from sconce.context import Context, StageNotes
from sconce.data import Data
from sconce.errors import ConfigError, DataError, ModelError, TechniqueError
from sconce.masks import KeepZeros
from sconce.metrics.base import Metric
from sconce.metrics.measure import measure_with_context, resolve_metrics
from sconce.metrics.timing import TimingSettings
from sconce.plugins import plugin_manager, registry
from sconce.recipe import Constraints, Recipe, Stage
from sconce.report import MetricInfo, Report, StageResult, stage_title
from sconce.runtime import resolve_device, seed_everything
from sconce.serialization import Architecture, StageRecord, rebuild, save_model
from sconce.storage import atomic_write_json, atomic_write_text, replace_dir, staging_dir
from sconce.technique import make_config, validate_technique

logger = logging.getLogger(__name__)

# The default recipe when none is given: the first installed technique of each group.
DEFAULT_RECIPE_GROUPS: tuple[tuple[str, ...], ...] = (
    ("prune.channel", "prune.gmp", "prune.magnitude"),
    ("quant.int8", "quant.dynamic"),
)
FINETUNED_KINDS = ("prune", "sparsify", "search")


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

    def save(self, out: str | Path) -> Path:
        """Write the model (``model.pt`` + ``model.json``), ``report.json``, ``report.md``,
        ``report.png`` and the stages' plots to ``out``; every file atomically.

        Example:
            >>> result.save("out/")  # doctest: +SKIP
            PosixPath('out')
        """
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        save_model(self.model, out, architecture=self.architecture,
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
    from sconce.storage import atomic_write_bytes

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
    """Resolve every stage's technique and validate its config before any work is done."""
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
    if constraints.max_accuracy_drop is not None and None not in (
            base.get("accuracy"), final.get("accuracy")):
        drop = base["accuracy"] - final["accuracy"]  # type: ignore[operator]
        if drop > constraints.max_accuracy_drop + 1e-9:
            broken.append(f"accuracy dropped {drop:.2f} points "
                          f"(allowed {constraints.max_accuracy_drop:.2f})")
    for name, metric, unit in (("target_latency", "latency", "ms/sample"),
                               ("target_size_mib", "size", "MiB"),
                               ("target_macs", "macs", "MACs")):
        target = getattr(constraints, name)
        if target is None or base.get(metric) is None or final.get(metric) is None:
            continue
        limit = target.limit(base[metric])  # type: ignore[arg-type]
        if final[metric] > limit:  # type: ignore[operator]
            broken.append(f"{metric} is {final[metric]:.4g} {unit} (target {limit:.4g})")
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
    recipe: Recipe | Sequence[Any] | str | None = None,
    constraints: Constraints | Mapping[str, Any] | None = None,
    *,
    finetune_epochs: float = 1,
    finetune_lr: float = 1e-3,
    distill: bool = True,
    device: str | torch.device = "auto",
    seed: int = 0,
    out: str | Path | None = None,
    work_dir: str | Path | None = None,
    resume: bool = False,
    metrics: Sequence[str | Metric] | None = None,
    adapter: ModelAdapter | None = None,
    timing: TimingSettings | None = None,
    progress: bool = True,
    model_spec: str | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
) -> CompressionResult:
    """Compress ``model`` on ``data`` and measure every stage.

    Args:
        model: never modified; the pipeline works on a deep copy.
        data: a :class:`sconce.Data`, a dict of loaders, or a registered dataset name.
        recipe: stages (names or ``(name, config)``), a :class:`Recipe`, or None for the
            default recipe (the best installed pruning, then int8 quantization).
        constraints: checked on the final model; broken ones are listed in the report.
        finetune_epochs: fine-tuning budget per pruning stage (0 turns it off).
        finetune_lr: fine-tuning learning rate.
        distill: distil from the original model while fine-tuning.
        device: "auto", "cpu" or "cuda".
        seed: seeds everything, for a reproducible run.
        out: save the model, report.json, report.md and plots here.
        work_dir: per-stage checkpoints (default: ``<out>/work``, or a temporary folder).
        resume: reuse the finished stages found in ``work_dir``.
        metrics: metric names to report (default: every default metric).
        adapter: how to run the model (default: from plugins, else a classifier).
        timing: latency settings.
        progress: progress bars for fine-tuning.
        model_spec, model_kwargs: how to rebuild the original architecture on load (the CLI
            fills these; without them, ``sconce.load`` needs ``model=``).

    Returns:
        A :class:`CompressionResult`.
    """
    if not isinstance(model, nn.Module):
        raise ModelError(f"model must be a torch nn.Module, got {type(model).__name__}")
    if finetune_epochs < 0:
        raise ConfigError(f"finetune_epochs must be >= 0, got {finetune_epochs!r}")
    resolved_data = Data.from_value(data)
    constraints = Constraints.from_value(constraints)
    given_adapter = adapter
    adapter = get_adapter(model, given_adapter)
    resolved = Recipe.from_value(recipe)
    nothing_installed = False
    if not resolved.stages:
        resolved = default_recipe(adapter.recipe_groups)
        nothing_installed = not resolved.stages
    planned = plan(resolved)

    seed_everything(seed)
    device = resolve_device(device)
    try:
        working = copy.deepcopy(model).to(device)
    except Exception as exc:
        raise ModelError(f"the model cannot be copied ({exc}); compress needs a deep-copyable "
                         "module so that yours is never modified") from None
    check_model_runs(working, resolved_data, adapter, device)
    if nothing_installed:
        logger.warning("no compression technique is installed; the report shows the "
                       "original model only (pip install sconce-prune sconce-quant)")

    if work_dir is None:
        work_dir = (Path(out) / "work" if out is not None
                    else Path(tempfile.mkdtemp(prefix="sconce-")))
    work_dir = Path(work_dir)
    ctx = Context(
        data=resolved_data, adapter=adapter, device=device, seed=seed, work_dir=work_dir,
        finetune_epochs=finetune_epochs, finetune_lr=finetune_lr, constraints=constraints,
        timing=timing or TimingSettings(), progress=progress,
    )
    metric_objects = resolve_metrics(metrics, have_data=True)
    hook = plugin_manager().hook
    settings = {"seed": seed, "finetune_epochs": finetune_epochs, "finetune_lr": finetune_lr,
                "distill": distill, "data": resolved_data.name, "device": device.type}
    fingerprints = _fingerprint(working, planned, settings)

    baseline = measure_with_context(working, ctx, metric_objects)
    report = Report(
        metrics=[MetricInfo.of(m, baseline.labels.get(m.name)) for m in metric_objects],
        stages=[StageResult("Original", values=baseline.values,
                            notes={**ctx.stage.notes, **baseline.notes})],
        run={"data": resolved_data.name or "custom", "device": device.type,
             "threads": ctx.timing.threads, "throughput_batch": ctx.timing.batch_size,
             "seed": seed, "finetune_epochs": finetune_epochs, "torch": torch.__version__},
    )
    hook.sconce_stage_finished(stage=report.stages[0], model=working, metrics=baseline.values)
    teacher = copy.deepcopy(working).eval() if distill else None
    ctx.teacher = teacher
    architecture = Architecture(spec=model_spec, kwargs=dict(model_kwargs or {}))
    original = copy.deepcopy(working) if resume else None
    artifacts: list[Path] = []
    current = working

    for index, stage in enumerate(planned, start=1):
        folder = _stage_dir(work_dir, index, stage.technique.name)
        title = stage_title(stage.technique.kind, [s.title for s in report.stages])
        if resume and _finished(folder, fingerprints[index - 1]):
            current, result, record = _restore_stage(folder, original, architecture, device)
            ctx.adapter = get_adapter(current, given_adapter)
            result.title = title
            logger.info("resumed: stage %d (%s) reused from %s", index, stage.label, folder)
        else:
            current, result, record = _run_stage(current, stage, ctx, title, metric_objects,
                                                 teacher, given_adapter)
            architecture_so_far = Architecture(architecture.spec, architecture.kwargs,
                                               [*architecture.stages, record])
            if distributed.is_main_process():
                _checkpoint(folder, current, result, architecture_so_far, fingerprints[index - 1])
        architecture.stages.append(record)
        artifacts += [Path(a) for a in result.artifacts]
        result.artifacts = [f"artifacts/{Path(a).name}" for a in result.artifacts]
        report.stages.append(result)
        hook.sconce_stage_finished(stage=result, model=current, metrics=result.values)

    if constraints is not None and not constraints.is_empty():
        broken = check_constraints(constraints, report.stages[0].values, report.stages[-1].values)
        report.run["constraints"] = constraints.to_dict()
        report.stages[-1].notes["constraints"] = "; ".join(broken) if broken else "all met"
    report.drop_inapplicable_metrics()
    current.eval()
    result = CompressionResult(model=current, report=report, architecture=architecture,
                               work_dir=work_dir, example_inputs=ctx.example_inputs(1),
                               artifacts=artifacts)
    if out is not None and distributed.is_main_process():
        result.save(out)
    return result


def _run_stage(current: nn.Module, stage: PlannedStage, ctx: Context, title: str,
               metrics: Sequence[Metric], teacher: nn.Module | None,
               given_adapter: ModelAdapter | None = None,
               ) -> tuple[nn.Module, StageResult, StageRecord]:
    ctx.stage = StageNotes()
    technique, config = stage.technique, stage.config
    logger.info("stage %s: applying %s %s", title, technique.name, config.to_dict())
    started = time.perf_counter()
    compressed = technique.apply(copy.deepcopy(current), config, ctx)
    if not isinstance(compressed, nn.Module):
        raise TechniqueError(f"technique {technique.name!r} returned "
                             f"{type(compressed).__name__} instead of an nn.Module")
    # a stage may change how the model runs (an ANN converted into a spiking network)
    ctx.adapter = get_adapter(compressed, given_adapter)
    wants_finetune = getattr(technique, "finetune_after", technique.kind in FINETUNED_KINDS)
    if wants_finetune and not ctx.stage.finetuned and ctx.finetune_epochs > 0 \
            and ctx.data is not None and ctx.data.train is not None:
        keeper = KeepZeros.of(compressed)
        ctx.finetune(compressed, teacher=teacher, callbacks=[keeper] if keeper else [])
    seconds = time.perf_counter() - started
    measured = measure_with_context(compressed, ctx, metrics)
    notes = {**ctx.stage.notes, **{f"{k} not measured": v for k, v in measured.notes.items()}}
    if ctx.stage.finetuned:
        notes.setdefault("fine-tuned", f"{ctx.finetune_epochs:g} epoch(s)"
                         + (", distilled from the original" if teacher is not None else ""))
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


def _restore_stage(folder: Path, original: nn.Module | None, architecture: Architecture,
                   device: torch.device) -> tuple[nn.Module, StageResult, StageRecord]:
    assert original is not None
    saved = json.loads((folder / "stage.json").read_text("utf-8"))
    description = json.loads((folder / "model.json").read_text("utf-8"))
    stages = Architecture.from_dict(description).stages
    model = rebuild(copy.deepcopy(original), stages)
    model.load_state_dict(torch.load(folder / "model.pt", map_location="cpu", weights_only=True))
    result = StageResult.from_dict(saved["result"])
    return model.to(device).eval(), result, stages[-1]
