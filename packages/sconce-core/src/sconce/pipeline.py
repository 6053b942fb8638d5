"""``sconce.compress``: copy → baseline → for each stage: apply → fine-tune → measure → report.

Each finished stage is checkpointed in the work folder (written atomically), so a run given
``resume=True`` restarts after the last finished stage. The work folder's ``run.json`` records
what the run is (a hash of the input model's weights, the data's identity, every option that
changes results); resuming from a folder another run wrote is refused with a line naming what
differs. The output folder is checked writable and locked for the whole run, so two runs never
write into one folder. A stage whose technique fails (raises anything but a
:class:`~sconce.errors.SconceError`, which is the user's to fix and propagates) is marked
failed in the report; the earlier stages are kept (and saved). The caller's model is never modified.

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

import contextlib
import copy
import hashlib
import io
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
from sconce.adapter import ClassifierAdapter, ModelAdapter
from sconce.api import context, get_adapter, get_data, resolve_metrics
from sconce.context import Context, StageNotes
from sconce.data import Data, split_batch
from sconce.errors import ConfigError, DataError, ModelError, SconceError, TechniqueError
from sconce.masks import KeepZeros
from sconce.metrics.base import Metric
from sconce.metrics.measure import compare_with_context, is_compared, measure_with_context
from sconce.metrics.timing import TimingSettings
from sconce.options import CompressOptions
from sconce.planning import AutoPlan, choose_techniques, plan_run
from sconce.plugins import plugin_manager, registry
from sconce.recipe import Constraints, Recipe, Stage, read_recipe
from sconce.report import MetricInfo, Report, StageResult, stage_title
from sconce.runtime import resolve_device, seed_everything
from sconce.serialization import Architecture, StageRecord, read_weights, rebuild, save_model
from sconce.storage import (
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    ensure_writable_dir,
    folder_lock,
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
TOGETHER_BYTES = 1 << 30
"""The end-of-run timing reloads every stage's model from its checkpoint and holds them all
while the original's footprint times the number of models stays under this; above it, each
intermediate stage is timed alone at the end of its stage and only the final model is timed
together with the original."""
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


@dataclass(frozen=True)
class StageFailure:
    """A stage whose technique raised something else than a :class:`SconceError` (a user's
    mistake, which propagates as one line): which stage, and the error.

    Attributes:
        index: the stage's position in the recipe (1-based).
        label: the stage as the recipe names it.
        error: ``"TypeName: first line of the message"``.

    Example:
        >>> str(StageFailure(2, "quant.int8", "ValueError: boom"))
        'stage 2 (quant.int8) failed: ValueError: boom'
    """

    index: int
    label: str
    error: str

    def __str__(self) -> str:
        return f"stage {self.index} ({self.label}) failed: {self.error}"


@dataclass
class CompressionResult:
    """What :func:`compress` returns: the compressed model and the report.

    Attributes:
        model: the compressed model (eval mode); after a failed stage, the last good one.
        report: measured metrics per stage (a failed stage is a column noting its error).
        architecture: how :func:`sconce.load` rebuilds the model.
        work_dir: the folder with per-stage checkpoints.
        failed: the stage that failed, or None when every stage finished.
    """

    model: nn.Module
    report: Report
    architecture: Architecture
    work_dir: Path
    example_inputs: Any = None
    artifacts: list[Path] = field(default_factory=list)
    failed: StageFailure | None = None

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
    if isinstance(adapter, ClassifierAdapter) and isinstance(logits, torch.Tensor) \
            and logits.dim() == 2:
        check_labels(data, int(logits.shape[1]))


def check_labels(data: Data, num_classes: int) -> None:
    """Check that the labels are class indices in ``[0, num_classes)``: all of them when the
    dataset exposes its targets, else the first batch of each split.

    Raises:
        DataError: float, negative or out-of-range labels, in one line naming the split.

    Example:
        >>> from torch.utils.data import DataLoader, TensorDataset
        >>> bad = Data(test=DataLoader(TensorDataset(torch.zeros(2, 3), torch.tensor([0, 5]))))
        >>> check_labels(bad, 3)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        sconce.errors.DataError: the test labels must be class indices 0..2, found 5; relabel ...
    """
    for split in ("train", "val", "test", "calibration"):
        loader = getattr(data, split)
        if loader is None:
            continue
        targets = data.targets_of(split)
        if targets is None:
            first = next(iter(loader), None)
            targets = split_batch(first)[1] if first is not None else None
        if not isinstance(targets, torch.Tensor) or targets.dim() != 1 or targets.numel() == 0:
            continue  # no labels, or soft / per-position targets: not class indices
        fix = "relabel the data, or give a model with an output per class"
        if targets.dtype.is_floating_point or targets.dtype.is_complex or \
                targets.dtype == torch.bool:
            raise DataError(f"the {split} labels are {targets.dtype} values; classification "
                            "needs integer class indices (e.g. labels.long())")
        low, high = int(targets.min()), int(targets.max())
        if low < 0 or high >= num_classes:
            bad = low if low < 0 else high
            raise DataError(f"the {split} labels must be class indices 0..{num_classes - 1}, "
                            f"found {bad}; {fix}")


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


RUN_FILE = "run.json"
DATA_SAMPLES = 8
"""Samples of each split hashed for the data's identity (spread over the split)."""


def weights_hash(model: nn.Module) -> str:
    """A SHA-256 of the model's state (names, dtypes, shapes and values).

    Example:
        >>> weights_hash(nn.Linear(2, 2)) == weights_hash(nn.Linear(2, 2))
        False
    """
    digest = hashlib.sha256()
    for name, value in model.state_dict().items():
        digest.update(name.encode())
        if isinstance(value, torch.Tensor):
            digest.update(f"{value.dtype}{tuple(value.shape)}".encode())
            digest.update(_tensor_bytes(value))
        else:
            digest.update(repr(value).encode())
    return digest.hexdigest()[:16]


def _tensor_bytes(tensor: torch.Tensor) -> Any:
    """The tensor's bytes as a buffer (no copy for a contiguous CPU tensor)."""
    tensor = tensor.detach().cpu()
    try:
        return tensor.contiguous().reshape(-1).view(torch.uint8).numpy()
    except (RuntimeError, TypeError):  # quantized or sparse layouts: their serialised form
        buffer = io.BytesIO()
        torch.save(tensor, buffer)
        return buffer.getvalue()


def data_identity(data: Data) -> dict[str, Any]:
    """What identifies the data cheaply: its name, classes, input shape, each split's size
    and batch size, and a hash of a few samples spread over each split.

    Example:
        >>> from torch.utils.data import DataLoader, TensorDataset
        >>> loader = DataLoader(TensorDataset(torch.zeros(4, 2), torch.zeros(4).long()))
        >>> data_identity(Data(test=loader))["test"]["size"]
        4
    """
    identity: dict[str, Any] = {"name": data.name, "classes": data.num_classes,
                                "input_shape": list(data.input_shape or ())}
    for split in ("train", "val", "test", "calibration"):
        loader = getattr(data, split)
        if loader is None:
            continue
        dataset = loader.dataset
        entry: dict[str, Any] = {"batch_size": loader.batch_size}
        try:
            size = len(dataset)
        except TypeError:  # an iterable dataset: no length, no indexing
            size = None
        entry["size"] = size
        if size:
            digest = hashlib.sha256()
            try:
                for index in sorted({i * size // DATA_SAMPLES for i in range(DATA_SAMPLES)}):
                    _hash_sample(digest, dataset[index])
                entry["sample_hash"] = digest.hexdigest()[:16]
            except Exception as exc:  # a dataset that cannot be indexed: sizes only
                logger.debug("the %s split cannot be sampled for its identity: %s", split, exc)
        identity[split] = entry
    return identity


def _hash_sample(digest: Any, value: Any) -> None:
    if isinstance(value, torch.Tensor):
        digest.update(_tensor_bytes(value))
    elif isinstance(value, Mapping):
        for key in sorted(value, key=str):
            digest.update(str(key).encode())
            _hash_sample(digest, value[key])
    elif isinstance(value, (tuple, list)):
        for item in value:
            _hash_sample(digest, item)
    else:
        digest.update(repr(value).encode())


def _check_resumable(work_dir: Path, identity: Mapping[str, Any]) -> None:
    """Refuse to resume from a work folder another run wrote, naming what differs."""
    marker = work_dir / RUN_FILE
    if not marker.is_file():
        return
    try:
        previous = json.loads(marker.read_text("utf-8")).get("identity", {})
    except (json.JSONDecodeError, AttributeError):
        previous = {}
    current = json.loads(json.dumps(identity, sort_keys=True, default=str))
    differs = sorted(key for key in set(previous) | set(current)
                     if previous.get(key) != current.get(key))
    if differs:
        raise ConfigError(
            f"cannot resume from {str(work_dir)!r}: it holds another run "
            f"({', '.join(differs)} differ); drop --resume to start over, or choose "
            "another output folder")


def _fingerprint(identity: Mapping[str, Any], planned: Sequence[PlannedStage]) -> list[str]:
    """One hash per stage prefix: a resumed run reuses stage k only if the run's identity
    and every stage up to and including k are the same."""
    head = json.dumps(identity, sort_keys=True, default=str)
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
            or None: the planner chooses the stages and their strength from the installed
            techniques by measuring (:mod:`sconce.planning`), within ``constraints`` (at most
            1 accuracy point lost when none is given); the report's notes explain the plan.
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
    # the folders are checked writable and locked before any compute, for the whole run
    locked = opts.out if opts.out is not None else opts.work_dir
    with (folder_lock(locked) if locked is not None and distributed.is_main_process()
          else contextlib.nullcontext()):
        return _compress(model, data, resolved, constraints, file_constraints, opts)


def _compress(model: nn.Module, data: Data | Mapping[str, Any] | str, resolved: Recipe,
              constraints: Constraints | Mapping[str, Any] | None,
              file_constraints: Constraints | None, opts: CompressOptions
              ) -> CompressionResult:
    resolved_data = get_data(data)
    limits = Constraints.from_value(constraints) if constraints is not None else file_constraints
    adapter = get_adapter(model, opts.adapter)  # before the recipe: it may suggest one
    automatic = not resolved.stages  # no recipe: the planner chooses by measuring
    planned = [] if automatic else plan(resolved)

    seed_everything(opts.seed)
    device = resolve_device(opts.device)
    working = _copy_of(model, device)
    check_model_runs(working, resolved_data, adapter, device)
    # after the checks of what the user gave (device, data, model), so those are named first
    if automatic and not choose_techniques(registry().techniques, adapter.recipe_groups):
        raise ConfigError("no compression technique is installed to plan with; "
                          "pip install sconce-prune sconce-quant, or give a recipe")

    out = Path(opts.out) if opts.out is not None else None
    work_dir = Path(opts.work_dir if opts.work_dir is not None else (
        out / "work" if out is not None else tempfile.mkdtemp(prefix="sconce-")))
    if distributed.is_main_process():
        ensure_writable_dir(work_dir, "work folder")
    ctx = context(
        resolved_data, adapter=adapter, device=device, seed=opts.seed, work_dir=work_dir,
        finetune_epochs=opts.finetune_epochs, finetune_lr=opts.finetune_lr,
        constraints=limits, timing=opts.timing or TimingSettings(), progress=opts.progress,
        teacher_loader=(lambda: _frozen_copy(model, device)) if opts.distill else None,
    )
    metric_objects = resolve_metrics(opts.metrics, have_data=True, task=adapter.task)
    hook = plugin_manager().hook
    identity = {
        "model weights": weights_hash(working), "data": data_identity(resolved_data),
        "seed": opts.seed, "finetune_epochs": opts.finetune_epochs,
        "finetune_lr": opts.finetune_lr, "distill": opts.distill, "device": device.type,
        "adapter": type(adapter).__qualname__,
        "metrics": [m if isinstance(m, str) else m.name for m in opts.metrics or []],
        "timing": repr(ctx.timing), "constraints": limits.to_dict() if limits else None,
        "torch": torch.__version__,
    }
    if opts.resume:
        _check_resumable(work_dir, identity)
    if distributed.is_main_process():
        atomic_write_json(work_dir / RUN_FILE, {"identity": json.loads(
            json.dumps(identity, sort_keys=True, default=str))})
    auto_plan: AutoPlan | None = None
    if automatic:
        auto_plan = _auto_plan(working, ctx, limits, adapter, work_dir, identity, opts.resume)
        planned = plan(auto_plan.recipe())
        ctx.constraints = auto_plan.technique_constraints()
        limits = Constraints.from_value({**(limits.to_dict() if limits else {}),
                                         "max_accuracy_drop": auto_plan.budget})
        seed_everything(opts.seed)  # the stages start as a resumed run's do
    fingerprints = _fingerprint(identity, planned)

    together = ctx.footprint(working).nbytes * (len(planned) + 1) <= TOGETHER_BYTES
    baseline = measure_with_context(working, ctx, metric_objects, compared=False)
    report = Report(
        metrics=[MetricInfo.of(m, baseline.labels.get(m.name)) for m in metric_objects],
        stages=[StageResult("Original", values=baseline.values,
                            notes={**ctx.stage.notes, **baseline.notes,
                                   **(auto_plan.notes() if auto_plan else {})})],
        run={"data": resolved_data.name or "custom", "device": device.type,
             "processes": distributed.world_size(),
             "threads": ctx.timing.threads, "throughput_batch": ctx.timing.batch_size,
             "seed": opts.seed, "finetune_epochs": opts.finetune_epochs,
             "torch": torch.__version__},
    )
    hook.sconce_stage_finished(stage=report.stages[0], model=working, metrics=baseline.values)
    architecture = Architecture()
    artifacts: list[Path] = []
    kept: list[Path | None] = []  # each stage's checkpoint, for the end-of-run timing
    current = working
    del working  # the stages below hand this one copy on; nothing else may keep it alive
    failed: StageFailure | None = None
    previous: Path | None = None  # the last finished stage's checkpoint

    for index, stage in enumerate(planned, start=1):
        folder = _stage_dir(work_dir, index, stage.technique.name)
        title = stage_title(stage.technique.kind, [s.title for s in report.stages])
        reused = opts.resume and _finished(folder, fingerprints[index - 1])
        if reused:
            try:
                restored = _restore_stage(folder, lambda: _copy_of(model, device), device)
            except SconceError as exc:
                logger.warning("stage %d's checkpoint cannot be reused (%s); running it again",
                               index, exc)
                reused = False
            else:
                del current  # the stage's checkpoint replaces it
                current, result, record = restored
                ctx.adapter = adapter_after_stage(current, ctx.adapter, opts.adapter)
                result.title = title
                logger.info("resumed: stage %d (%s) reused from %s", index, stage.label, folder)
        if not reused:
            try:
                current, result, record = _run_stage(current, stage, ctx, title, metric_objects,
                                                     opts.adapter)
            except SconceError:  # a user's mistake: one line (the earlier stages are in work/)
                raise
            except Exception as exc:  # a fault in the technique: the report names the stage
                ctx.release_teacher()
                failed = StageFailure(index, stage.label, _one_line(exc))
                logger.error("%s; keeping the stages before it", failed)
                logger.debug("the failed stage's traceback", exc_info=True)
                report.stages.append(StageResult(
                    title, technique=stage.technique.name, kind=stage.technique.kind,
                    config=stage.config.to_dict(), notes={"failed": failed.error}))
                report.run["failed"] = str(failed)
                del current  # the technique may have changed it part-way
                current = (_restore_stage(previous, lambda: _copy_of(model, device), device)[0]
                           if previous is not None else _copy_of(model, device))
                break
            architecture_so_far = Architecture(stages=[*architecture.stages, record])
            if distributed.is_main_process():
                _checkpoint(folder, current, result, architecture_so_far, fingerprints[index - 1])
        previous = folder
        ctx.release_teacher()
        architecture.stages.append(record)
        _carry_kept_values(result, report.stages[-1], metric_objects)
        artifacts += [Path(a) for a in result.artifacts]
        result.artifacts = [f"artifacts/{Path(a).name}" for a in result.artifacts]
        report.stages.append(result)
        if index < len(planned):
            kept.append(_keep_for_timing(folder, current, result, ctx, metric_objects,
                                         together))
        hook.sconce_stage_finished(stage=result, model=current, metrics=result.values)
    _time_together(model, device, kept, current if planned else None, report, ctx,
                   metric_objects)

    if limits is not None and not limits.is_empty() and failed is None:
        broken = check_constraints(limits, report.stages[0].values, report.stages[-1].values)
        report.run["constraints"] = limits.to_dict()
        report.stages[-1].notes["constraints"] = "; ".join(broken) if broken else "all met"
    report.drop_inapplicable_metrics()
    current.eval()
    compressed = CompressionResult(model=current, report=report, architecture=architecture,
                                   work_dir=work_dir, example_inputs=ctx.example_inputs(1),
                                   artifacts=artifacts, failed=failed)
    if out is not None and distributed.is_main_process():
        compressed.save(out)
    return compressed


PLAN_FILE = "plan.json"


def _auto_plan(model: nn.Module, ctx: Context, limits: Constraints | None,
               adapter: ModelAdapter, work_dir: Path, identity: Mapping[str, Any],
               resume: bool) -> AutoPlan:
    """The planner's stages for a run without a recipe: measured now, or, when resuming,
    read back from the work folder's ``plan.json`` (written by this same run), so a resumed
    run follows the same plan."""
    path = work_dir / PLAN_FILE
    same = json.loads(json.dumps(identity, sort_keys=True, default=str))
    if resume and path.is_file():
        try:
            saved = json.loads(path.read_text("utf-8"))
            if saved.get("identity") == same:
                logger.info("resumed: the plan saved in %s", path)
                return AutoPlan.from_dict(saved["plan"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            logger.warning("the saved plan cannot be reused (%s); planning again", exc)
    logger.info("planning: measuring candidates on the validation split")
    chosen = plan_run(model, ctx, registry().techniques, limits,
                      groups=adapter.recipe_groups)
    if distributed.is_main_process():
        atomic_write_json(path, {"identity": same, "plan": chosen.to_dict()})
    return chosen


def _one_line(exc: BaseException) -> str:
    first = (str(exc).strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


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


def _carry_kept_values(result: StageResult, before: StageResult, metrics: Sequence[Metric]
                       ) -> None:
    """A metric the stage's kind does not change (``kept_by_kinds``: MACs under
    quantization) and that could not measure this stage's model takes the value from the
    stage before, with a note saying so and why."""
    for metric in metrics:
        previous = before.values.get(metric.name)
        if (result.values.get(metric.name) is not None or previous is None
                or result.kind not in getattr(metric, "kept_by_kinds", ())):
            continue
        result.values[metric.name] = previous
        reason = result.notes.pop(f"{metric.name} not measured", "")
        result.notes[metric.name] = (
            f"carried from {before.title} ({result.kind} keeps the count, changing only the "
            f"precision of each operation)" + (f"; not counted on this model: {reason}" if reason
                                               else ""))


def _keep_for_timing(folder: Path, model: nn.Module, result: StageResult, ctx: Context,
                     metrics: Sequence[Metric], together: bool) -> Path | None:
    """The checkpoint the end-of-run timing reloads a finished stage's model from; when the
    models are too large to hold together the model is timed now, alone, and None returned.
    Under torchrun only rank 0 times (another rank timing too would slow it down)."""
    if not distributed.is_main_process():
        return None
    if together and (folder / "stage.json").is_file():
        return folder
    reason = ("the models are too large to hold together" if not together
              else "its checkpoint is missing")
    measured = measure_with_context(model, ctx, [m for m in metrics if is_compared(m)])
    result.values.update(measured.values)
    for name in measured.values:
        result.notes[f"{measured.labels[name]} timing"] = (
            f"timed alone at the end of its stage: {reason}")
    return None


def _time_together(original: nn.Module, device: torch.device, checkpoints: list[Path | None],
                   final: nn.Module | None, report: Report, ctx: Context,
                   metrics: Sequence[Metric]) -> None:
    """Time the original, every checkpointed stage's model (reloaded) and the final model
    together, interleaved, at the end of the run, so that background load lands on every
    column alike; fill the report."""
    if not any(is_compared(m) for m in metrics) or not distributed.is_main_process():
        return  # under torchrun rank 0 times alone: the other ranks would slow it down
    reference = _copy_of(original, device).eval()  # the caller's model is never timed in place
    columns, chosen = [0], [reference]
    for column, folder in enumerate(checkpoints, start=1):
        if folder is None:
            continue
        try:
            chosen.append(_restore_stage(folder, lambda: _copy_of(original, device), device)[0])
            columns.append(column)
        except Exception as exc:  # the stage keeps no latency rather than a wrong one
            report.stages[column].notes["latency not measured"] = (
                f"its checkpoint could not be reloaded for timing ({type(exc).__name__}: {exc})")
    if final is not None:
        columns.append(len(report.stages) - 1)
        chosen.append(final)
    logger.info("timing %s together, interleaved", ", ".join(
        report.stages[i].title for i in columns))
    measured = compare_with_context(chosen, ctx, metrics)
    for column, values in zip(columns, measured, strict=True):
        stage = report.stages[column]
        stage.values.update(values.values)
        for name, text in values.notes.items():
            stage.notes[f"{name} not measured"] = text
        if column > 0:
            for name, text in values.stability.items():
                stage.notes[f"{values.labels[name]} vs original"] = text
    report.run["timing"] = ("interleaved at the end of the run: "
                            + ", ".join(report.stages[i].title for i in columns))


def adapter_after_stage(model: nn.Module, current: ModelAdapter,
                        given: ModelAdapter | None = None) -> ModelAdapter:
    """The adapter that runs ``model`` after a stage: a stage may change how the model runs
    (an ANN converted into a spiking network), so the plugins are asked again; an adapter of
    the same kind as before is kept, with its state (e.g. the reference model an encoder's
    ``embedding_cosine`` compares with).

    Example:
        >>> from sconce.adapter import ClassifierAdapter
        >>> kept = ClassifierAdapter()
        >>> adapter_after_stage(nn.Linear(2, 2), kept) is kept
        True
    """
    found = get_adapter(model, given)
    return current if type(found) is type(current) else found


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
    ctx.adapter = adapter_after_stage(compressed, ctx.adapter, given_adapter)
    check_restorable(technique, before, structure_of(compressed))
    wants_finetune = bool(getattr(technique, "finetune_after", technique.kind in FINETUNED_KINDS))
    if wants_finetune and not ctx.stage.finetuned \
            and ctx.finetune_epochs > 0 and ctx.data is not None and ctx.data.train is not None:
        keeper = KeepZeros.of(compressed)
        ctx.finetune(compressed, teacher=ctx.teacher, callbacks=[keeper] if keeper else [])
    seconds = time.perf_counter() - started
    measured = measure_with_context(compressed, ctx, metrics, compared=False)
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
    try:
        saved = json.loads((folder / "stage.json").read_text("utf-8"))
        description = json.loads((folder / "model.json").read_text("utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelError(f"{str(folder)!r} is damaged ({exc})") from None
    stages = Architecture.from_dict(description).stages
    model = rebuild(original(), stages, registry().techniques)
    try:
        model.load_state_dict(read_weights(folder / "model.pt"))
    except RuntimeError as exc:
        raise ModelError(f"{str(folder)!r} does not fit this model ({exc})") from None
    result = StageResult.from_dict(saved["result"])
    return model.to(device).eval(), result, stages[-1]
