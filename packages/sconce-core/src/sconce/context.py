"""The context a technique or metric runs in: everything it may read, use and report.

:func:`sconce.compress` builds one :class:`Context` per run (and resets ``ctx.stage`` before
each stage); :func:`sconce.measure` builds a light one, with example inputs and no data. A
technique takes nothing from anywhere else: not the caller's model, not global settings.

What a technique may **read**:
    ``data`` (:class:`sconce.Data`: ``train`` / ``val`` / ``test`` / ``calibration`` loaders;
    None under ``measure`` with example inputs), ``device``, ``seed``, ``adapter`` (run every
    model through it: ``ctx.adapter.forward(model, inputs)``), ``constraints`` (the run's
    :class:`sconce.Constraints`, e.g. ``max_accuracy_drop`` for a budget), ``timing``
    (:class:`sconce.TimingSettings`, for latency-aware choices), ``finetune_epochs`` /
    ``finetune_lr`` (the run's budget), ``progress``, ``work_dir`` (a folder it may write to).

What it may **use**:
    ``example_inputs(n)`` (n real inputs), ``calibration_inputs(max_samples)`` (input batches
    from the calibration split, on the device), ``require_data()``, ``evaluate(model, split,
    max_samples)`` (accuracy and loss, :class:`sconce.evaluation.EvalResult`; decisions use
    ``"val"``, the report ``"test"``), ``finetune(model, epochs, teacher, callbacks, **options)``
    (the core's training loop; marks the stage as fine-tuned so the pipeline does not repeat
    it), ``teacher`` (the caller's original model, frozen: eval mode, no gradients; built on
    first use and released when the stage ends; None when distillation is off; never modify
    it), ``footprint(model)`` (true storage, asking the plugins that pack modules).

What it **reports**:
    ``note(key, value)`` (a fact under the report), ``artifact_path(filename)`` (where to
    write a plot the report links), ``set_restore_record(record)`` (the JSON-able record its
    ``restore`` reads back; see :mod:`sconce.technique`).

Example:
    >>> import torch
    >>> ctx = Context.for_inputs(torch.randn(1, 3, 8, 8))
    >>> ctx.example_inputs(4).shape
    torch.Size([4, 3, 8, 8])
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from sconce.adapter import ClassifierAdapter, ModelAdapter
from sconce.data import Data
from sconce.errors import ConfigError, DataError
from sconce.evaluation import EvalResult, evaluate
from sconce.footprint import Footprint, ModuleFootprint, model_footprint
from sconce.metrics.timing import TimingSettings
from sconce.progress import track
from sconce.recipe import Constraints, Target
from sconce.train import TrainCallback, fit

logger = logging.getLogger(__name__)
T = TypeVar("T")
CONSTRAINT_NAMES = ("max_accuracy_drop", "target_latency", "target_size_mib", "target_macs")
"""The constraints of a run (:class:`sconce.Constraints`' fields)."""


@dataclass
class StageNotes:
    """What a technique leaves for the report and for reloading, for the current stage.

    Attributes:
        notes: short facts shown under the report (``{"engine": "fbgemm"}``).
        restore_record: JSON-able record that the technique's ``restore`` reads back.
        artifacts: files the technique wrote (plots), relative to the output folder.
        finetuned: the technique fine-tuned the model itself (the pipeline then does not).
    """

    notes: dict[str, Any] = field(default_factory=dict)
    restore_record: dict[str, Any] | None = None
    artifacts: list[Path] = field(default_factory=list)
    finetuned: bool = False


class _Teacher:
    """The ``teacher`` field: a model set directly, or built by ``teacher_loader`` on first use
    and kept until :meth:`Context.release_teacher`."""

    def __get__(self, ctx: Context | None, owner: type | None = None) -> nn.Module | None:
        if ctx is None:
            return None  # the dataclass default
        teacher: nn.Module | None = ctx.__dict__.get("_teacher")
        if teacher is None and ctx.teacher_loader is not None:
            teacher = ctx.__dict__["_teacher"] = ctx.teacher_loader()
        return teacher

    def __set__(self, ctx: Context, value: nn.Module | None) -> None:
        # the dataclass passes this descriptor itself as the field's default
        ctx.__dict__["_teacher"] = None if isinstance(value, _Teacher) else value


@dataclass
class Context:
    """Everything a technique may use (see the module docstring for the contract).

    Attributes:
        data: the run's data (None when only example inputs are known).
        adapter: how to run the model.
        device: where models run.
        seed: the run's seed.
        work_dir: a folder the technique may write to.
        finetune_epochs: the fine-tuning budget per stage (0 turns fine-tuning off).
        finetune_lr: learning rate for fine-tuning.
        teacher: the original model, frozen, for distillation and accuracy budgets (None
            turns distillation off); set directly, or built by ``teacher_loader`` on first use.
        constraints: the run's constraints, if any.
        timing: how latency is measured.
        progress: whether progress bars may show.
        measure_split: the split whose accuracy the report shows.
        inputs: example inputs, when there is no data (:meth:`for_inputs`).
        stage: what the current stage noted (reset by the pipeline before each stage).
        teacher_loader: builds the teacher on demand (the pipeline's; it is released after
            each stage by :meth:`release_teacher`).
        module_footprint: the plugins' ``sconce_module_footprint`` hook, for :meth:`footprint`.
        guards: callbacks added to every :meth:`finetune` (the planner's stop on a NaN loss).

    Example:
        >>> ctx = Context(teacher_loader=lambda: torch.nn.Linear(2, 2))
        >>> ctx.teacher is ctx.teacher, ctx.release_teacher()
        (True, None)
    """

    data: Data | None = None
    adapter: ModelAdapter = field(default_factory=ClassifierAdapter)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    seed: int = 0
    work_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="sconce-")))
    finetune_epochs: float = 1.0
    finetune_lr: float = 1e-3
    teacher: _Teacher = field(default=_Teacher(), repr=False, compare=False)
    constraints: Constraints | None = None
    timing: TimingSettings = field(default_factory=TimingSettings)
    progress: bool = True
    measure_split: str = "test"
    inputs: Any = None
    stage: StageNotes = field(default_factory=StageNotes)
    teacher_loader: Callable[[], nn.Module] | None = field(default=None, repr=False,
                                                           compare=False)
    module_footprint: ModuleFootprint | None = field(default=None, repr=False, compare=False)
    guards: tuple[TrainCallback, ...] = field(default=(), repr=False, compare=False)

    @classmethod
    def for_inputs(cls, example_inputs: Any, **fields: Any) -> Context:
        """A context that knows only example inputs (no data): for measuring a model."""
        return cls(inputs=example_inputs, **fields)

    # --- data -------------------------------------------------------------------------------
    def example_inputs(self, batch_size: int = 1) -> Any:
        """``batch_size`` real inputs from the data (or the given example repeated)."""
        if self.data is not None:
            return self.data.example_inputs(batch_size)
        if self.inputs is None:
            raise DataError("no data and no example inputs; pass data= or example_inputs=")
        if isinstance(self.inputs, torch.Tensor):
            first = self.inputs[:1]
            return first.expand(batch_size, *first.shape[1:]).contiguous()
        return tuple(t[:1].expand(batch_size, *t.shape[1:]).contiguous() for t in self.inputs)

    def require_data(self) -> Data:
        """The data, or a clear error for techniques that cannot work without it."""
        if self.data is None:
            raise DataError("this technique needs data; pass data= to compress()")
        return self.data

    def calibration_inputs(self, max_samples: int = 512) -> Iterator[Any]:
        """Input batches (no targets) from the calibration split, up to ``max_samples``.

        Raises:
            DataError: when the calibration data yields nothing.
        """
        yielded = False
        for batch in self.require_data().batches("calibration", max_samples):
            inputs, _ = self.adapter.split_batch(batch)
            yielded = True
            yield self.adapter.to_device(inputs, self.device)
        if not yielded:
            raise DataError("the calibration data is empty; give a non-empty "
                            "'calibration' or 'train' loader")

    # --- constraints ------------------------------------------------------------------------
    def limit(self, name: str, own: float | str | Target | None = None) -> float | Target | None:
        """A constraint as a technique should apply it: the stage's ``own`` config value when
        set, else the run's constraint of that name (None when neither is set).

        One convention for every technique: ``max_accuracy_drop`` is accuracy points lost
        against the original model; ``target_latency`` / ``target_size_mib`` / ``target_macs``
        are :class:`sconce.recipe.Target` values (``"4x"`` a reduction against the original,
        else an absolute value in the metric's unit), whichever of the two gave them.

        Raises:
            ConfigError: an unknown constraint name, or an invalid ``own`` value.

        Example:
            >>> ctx = Context(constraints=Constraints(target_macs="4x"))
            >>> ctx.limit("target_macs"), ctx.limit("target_macs", "2x")
            (Target(value=4.0, is_ratio=True), Target(value=2.0, is_ratio=True))
            >>> ctx.limit("max_accuracy_drop") is None
            True
        """
        if name not in CONSTRAINT_NAMES:
            raise ConfigError(f"unknown constraint {name!r}; known: "
                              f"{', '.join(CONSTRAINT_NAMES)}")
        if own is not None:
            if name != "max_accuracy_drop":
                return Target.parse(own, name)
            if isinstance(own, bool) or not isinstance(own, (int, float)):
                raise ConfigError(f"max_accuracy_drop must be a number >= 0, got {own!r}")
            return Constraints(max_accuracy_drop=float(own)).max_accuracy_drop
        return getattr(self.constraints, name) if self.constraints is not None else None

    def accuracy_budget(self, model: nn.Module, own: float | None = None,
                        max_samples: int | None = None) -> float | None:
        """The accuracy points a stage may still lose, against its input ``model``.

        ``own`` (the stage's config) counts from ``model``, as before. The run's
        ``max_accuracy_drop`` counts from the original model (the ``teacher``): what earlier
        stages already lost on validation is taken off, so a budget means the same in every
        stage. Without a teacher (distillation off) the stage's input stands for the original.

        Example:
            >>> Context(constraints=Constraints(max_accuracy_drop=1.0)).accuracy_budget(
            ...     torch.nn.Linear(2, 2), own=0.5)
            0.5
        """
        if own is not None:
            return float(own)
        budget = self.limit("max_accuracy_drop")
        if not isinstance(budget, float):
            return None
        teacher = self.teacher
        if teacher is None or teacher is model or self.data is None:
            return budget
        spent = (self.evaluate(teacher, "val", max_samples).accuracy
                 - self.evaluate(model, "val", max_samples).accuracy)
        left = max(0.0, budget - max(0.0, spent))
        if spent > 0:
            logger.info("accuracy budget: %.2f of %.2f points already lost by earlier stages",
                        spent, budget)
        return left

    # --- running ----------------------------------------------------------------------------
    def evaluate(self, model: nn.Module, split: str = "val",
                 max_samples: int | None = None) -> EvalResult:
        """Accuracy and loss of ``model`` on ``split`` (validation by default).

        Example:
            >>> ctx.evaluate(model).accuracy  # doctest: +SKIP
            97.5
        """
        data = self.require_data()
        return evaluate(model, data.batches(split, max_samples), self.adapter, self.device,
                        max_samples=max_samples)

    def finetune(
        self,
        model: nn.Module,
        epochs: float | None = None,
        teacher: nn.Module | None = None,
        callbacks: Sequence[TrainCallback] = (),
        **options: Any,
    ) -> nn.Module:
        """Fine-tune ``model`` with the core's loop; distil from ``teacher`` when given.

        ``epochs`` defaults to the run's budget; ``options`` go to :func:`sconce.train`.
        Returns the same model, fine-tuned.
        """
        epochs = self.finetune_epochs if epochs is None else epochs
        if epochs <= 0:
            return model
        options.setdefault("lr", self.finetune_lr)
        options.setdefault("progress_label", "fine-tuning")
        fit(model, self.require_data(), epochs, teacher=teacher,
            callbacks=[*callbacks, *self.guards],
            device=self.device, seed=self.seed, progress=self.progress,
            adapter=self.adapter, **options)
        self.stage.finetuned = True
        return model

    def track(self, items: Iterable[T], *, total: int | None = None, description: str = ""
              ) -> Iterator[T]:
        """Yield ``items`` showing the progress of a long step (a calibration, a scan, a
        search): a bar on a terminal, periodic log lines otherwise, nothing when the run's
        ``progress`` is off (:func:`sconce.progress.track`).

        Example:
            >>> [x for x in Context(progress=False).track(range(3), description="scan")]
            [0, 1, 2]
        """
        return track(items, total=total, description=description, enabled=self.progress)

    def footprint(self, model: nn.Module) -> Footprint:
        """The true storage of ``model``: plugins answer for the modules they pack.

        Example:
            >>> Context().footprint(torch.nn.Linear(4, 2)).params
            10
        """
        return model_footprint(model, self.module_footprint)

    def release_teacher(self) -> None:
        """Drop a teacher built by ``teacher_loader`` (the next use builds it again)."""
        if self.teacher_loader is not None:
            self.__dict__["_teacher"] = None

    # --- notes for the report -----------------------------------------------------------------
    def note(self, key: str, value: Any) -> None:
        """Record a fact about this stage for the report (``ctx.note("engine", "x86")``)."""
        self.stage.notes[key] = value

    def set_restore_record(self, record: dict[str, Any]) -> None:
        """Leave the JSON-able record this technique's ``restore`` needs to rebuild the model."""
        self.stage.restore_record = record

    def artifact_path(self, filename: str) -> Path:
        """A path in the work folder for a file (e.g. a plot) that the report should include."""
        path = self.work_dir / "artifacts" / filename
        path.parent.mkdir(parents=True, exist_ok=True)
        self.stage.artifacts.append(path)
        return path
