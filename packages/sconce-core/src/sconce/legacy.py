"""The attribute-style API of the original sconce README, on top of the new pipeline.

Example:
    >>> from sconce import sconce
    >>> sconces = sconce()
    >>> sconces.prune_mode = "GMP"
    >>> sconces.technique_for_prune_mode()
    'prune.gmp'
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from sconce.adapter import ModelAdapter
from sconce.api import context, get_adapter, get_data, measure, model_footprint, resolve_metrics
from sconce.api import train as train_model
from sconce.data import Data
from sconce.errors import ConfigError, ModelError, UnknownNameError
from sconce.evaluation import evaluate as evaluate_model
from sconce.metrics.measure import compare_with_context, measure_with_context
from sconce.metrics.standard import MIB
from sconce.pipeline import DEFAULT_RECIPE_GROUPS, CompressionResult
from sconce.pipeline import compress as run_compress
from sconce.plugins import registry
from sconce.report import MetricInfo, Report, StageResult
from sconce.runtime import resolve_device

logger = logging.getLogger(__name__)

#: prune_mode values of the original README and the techniques they map onto.
PRUNE_MODES: dict[str, str] = {
    "GMP": "prune.gmp",
    "CWP": "prune.channel",
    "MAGNITUDE": "prune.magnitude",
    "OBC": "prune.obc",
    "SPARSEGPT": "prune.sparsegpt",
    "WANDA": "prune.wanda",
}
#: which distribution provides each technique family, for "install X" hints.
PROVIDERS: dict[str, str] = {"prune": "sconce-prune", "quant": "sconce-quant",
                             "sparse": "sconce-sparse", "nas": "sconce-nas", "snn": "sconce-snn"}


def _install_hint(technique: str) -> str:
    family = technique.split(".", 1)[0]
    provider = PROVIDERS.get(family)
    return f"pip install {provider}" if provider else "install the plugin that provides it"


class sconce:
    """Set attributes, then call :meth:`compress` (or :meth:`train`, :meth:`evaluate`, ...).

    Attributes:
        model: the network.
        criterion: training loss (default cross-entropy).
        optimizer, scheduler: for :meth:`train` (defaults: AdamW with a cosine schedule).
        dataloader: ``{"train": loader, "test": loader}`` (or a dataset name).
        epochs: training epochs run by :meth:`compress` before compressing (0 skips).
        device: torch device or "auto".
        experiment_name: the folder under ``out_dir`` that :meth:`compress` saves to (the
            model, ``report.json`` / ``.md`` / ``.png``, the stages' checkpoints).
        prune_mode: "GMP", "CWP", "OBC", "sparsegpt", "wanda", "magnitude" or "" for none.
        num_finetune_epochs: fine-tuning budget after pruning (alias ``fine_tune_epochs``).
        quantize: add an int8 stage after pruning when a quantization plugin is installed.
        snn, num_steps: spiking networks (needs ``sconce-snn``) and their time steps.
        seed: for reproducibility.
        out_dir: where the ``experiment_name`` folder goes (default: the current folder;
            None: not saved).
    """

    def __init__(self) -> None:
        self.model: nn.Module | None = None
        self.criterion: Any = nn.CrossEntropyLoss()
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler: Any = None
        self.dataloader: Any = None
        self.epochs: float = 1
        self.device: str | torch.device = "auto"
        self.experiment_name: str = "sconce"
        self.prune_mode: str = "GMP"
        self.num_finetune_epochs: float = 1
        self.quantize: bool = True
        self.snn: bool = False
        self.num_steps: int | None = None
        self.seed: int = 0
        self.out_dir: str | None = "."
        self.progress: bool = True

    # the original README used both spellings
    @property
    def fine_tune_epochs(self) -> float:
        return self.num_finetune_epochs

    @fine_tune_epochs.setter
    def fine_tune_epochs(self, value: float) -> None:
        self.num_finetune_epochs = value

    # --- helpers ------------------------------------------------------------------------------
    def _model(self, model: nn.Module | None = None) -> nn.Module:
        chosen = model if model is not None else self.model
        if chosen is None:
            raise ModelError("set sconces.model = YourNet() first")
        return chosen

    def _data(self) -> Data:
        if self.dataloader is None:
            raise ConfigError('set sconces.dataloader = {"train": ..., "test": ...} first')
        return get_data(self.dataloader)

    def _adapter(self, model: nn.Module) -> ModelAdapter:
        adapter = get_adapter(model)
        if self.snn:
            if type(adapter).__name__ == "ClassifierAdapter":
                raise ConfigError("snn=True needs the spiking-network plugin: "
                                  "pip install sconce-snn")
            if self.num_steps is not None and hasattr(adapter, "num_steps"):
                adapter.num_steps = self.num_steps
        return adapter

    def technique_for_prune_mode(self) -> str | None:
        """The technique name ``prune_mode`` maps onto (None for no pruning)."""
        mode = (self.prune_mode or "").strip()
        if not mode or mode.lower() == "none":
            return None
        name = PRUNE_MODES.get(mode.upper().replace("-", "").replace("_", ""))
        if name is None:
            raise UnknownNameError("prune_mode", mode, PRUNE_MODES)
        return name

    def recipe(self) -> list[str]:
        """The stages :meth:`compress` runs: the pruning technique, then int8 if installed
        (the quantization the model's adapter suggests: int8 weights for spiking networks,
        whose neurons must keep running step by step)."""
        installed = registry().techniques
        stages = []
        prune = self.technique_for_prune_mode()
        if prune is not None:
            if prune not in installed:
                raise UnknownNameError(
                    "technique", prune, installed,
                    f"prune_mode={self.prune_mode!r} needs it: {_install_hint(prune)}")
            stages.append(prune)
        if self.quantize:
            adapter = self._adapter(self.model) if self.model is not None else None
            groups = (adapter.recipe_groups if adapter is not None else None) or \
                DEFAULT_RECIPE_GROUPS
            int8 = next((name for name in groups[-1] if name in installed), None)
            if int8 is not None:
                stages.append(int8)
            else:
                logger.warning("no int8 quantization installed; %s for the Quantized column",
                               _install_hint(groups[-1][0]))
        return stages

    # --- the original methods -----------------------------------------------------------------
    def train(self, epochs: float | None = None) -> nn.Module:
        """Train ``self.model`` in place for ``epochs`` (default ``self.epochs``)."""
        model = self._model()
        train_model(model, self._data(), self.epochs if epochs is None else epochs,
                    optimizer=self.optimizer, scheduler=self.scheduler, criterion=self.criterion,
                    device=self.device, seed=self.seed, progress=self.progress,
                    adapter=self._adapter(model))
        return model

    def evaluate(self, model: nn.Module | None = None, split: str = "test") -> float:
        """Accuracy in percent on ``split``."""
        chosen = self._model(model)
        data = self._data()
        return evaluate_model(chosen, data.batches(split), self._adapter(chosen),
                              resolve_device(self.device)).accuracy

    def compress(self) -> CompressionResult:
        """Train (``epochs``), prune (``prune_mode``), fine-tune, quantize, print the
        comparison table and its notes (as ``sconce compress`` does) and save everything to
        ``out_dir/experiment_name``. Returns the same result object as
        :func:`sconce.compress`."""
        model = self._model()
        if self.epochs and self.epochs > 0:
            self.train()
        out = None if self.out_dir is None else f"{self.out_dir}/{self.experiment_name}"
        result = run_compress(model, self._data(), recipe=self.recipe(),
                              finetune_epochs=self.num_finetune_epochs, device=self.device,
                              seed=self.seed, out=out, adapter=self._adapter(model),
                              progress=self.progress)
        result.report.print()
        if out is not None:
            logger.info("saved to %s/ (model, report.json, report.md, report.png)", out)
        return result

    def measure_latency(self, model: nn.Module | None = None, example_inputs: Any = None) -> float:
        """Milliseconds per sample at batch 1, on the CPU."""
        chosen = self._model(model)
        inputs = example_inputs if example_inputs is not None else self._data().example_inputs(1)
        value = measure(chosen, example_inputs=inputs, metrics=["latency"],
                        adapter=self._adapter(chosen))["latency"]
        if value is None:
            raise ModelError("the latency of this model cannot be measured")
        return value

    def get_model_macs(self, model: nn.Module | None = None, example_inputs: Any = None) -> int:
        """Multiply-accumulates of one forward pass at batch 1."""
        chosen = self._model(model)
        inputs = example_inputs if example_inputs is not None else self._data().example_inputs(1)
        value = measure(chosen, example_inputs=inputs, metrics=["macs"],
                        adapter=self._adapter(chosen))["macs"]
        if value is None:
            raise ModelError("MACs cannot be counted for this model (torchprofile cannot trace it)")
        return int(value)

    def get_model_size(self, model: nn.Module | None = None) -> float:
        """Size in MiB of what would ship (true bytes of stored weights and buffers)."""
        return model_footprint(self._model(model)).nbytes / MIB

    def get_num_parameters(self, model: nn.Module | None = None,
                           count_nonzero_only: bool = False) -> int:
        """Number of weights (or of non-zero weights)."""
        footprint = model_footprint(self._model(model))
        return footprint.nonzero if count_nonzero_only else footprint.params

    def compare_models(self, original: nn.Module, compressed: nn.Module) -> Report:
        """Measure both models on this object's data (latency timed for both together,
        interleaved) and print the comparison table with its notes."""
        data = self._data()
        metrics = resolve_metrics(None, have_data=True,
                                  task=self._adapter(original).task)
        ctx = context(data, adapter=self._adapter(original), device=resolve_device(self.device),
                      progress=False)
        rows = [measure_with_context(model, ctx, metrics, compared=False)
                for model in (original, compressed)]
        for row, timed in zip(rows, compare_with_context([original, compressed], ctx, metrics),
                              strict=True):
            row.values.update(timed.values)
            row.notes.update({f"{timed.labels[k]} vs original": v
                              for k, v in timed.stability.items()})
        report = Report(metrics=[MetricInfo.of(m, rows[0].labels.get(m.name)) for m in metrics],
                        stages=[StageResult("Original", values=rows[0].values),
                                StageResult("Compressed", technique="(given)",
                                            values=rows[1].values, notes=rows[1].notes)])
        report.drop_inapplicable_metrics()
        report.print()
        return report
