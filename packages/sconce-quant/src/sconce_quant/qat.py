"""``quant.qat``: quantization-aware training, then the same int8 engines as ``quant.int8``.

Every Conv/Linear layer's input is fake-quantized with its calibrated range and its weight
per output channel (:mod:`sconce_quant.simulate`); the model is fine-tuned through the core's
training loop (distilling from the original model unless ``distill`` is off), so the weights
learn to live with int8 rounding; the fake quantization is then removed and the fine-tuned
model is calibrated and converted exactly as ``quant.int8`` does.

Example:
    >>> import sconce
    >>> sconce.compress(sconce.models.demo_cnn(in_channels=1, image_size=8), "digits",
    ...                 recipe=[("quant.qat", {"epochs": 1})])  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

from torch import nn

from sconce.config import check_positive
from sconce.context import Context
from sconce_quant.simulate import calibrate_inputs, quantizable_layers, simulated
from sconce_quant.static import Int8Config, StaticInt8

logger = logging.getLogger(__name__)


@dataclass
class QATConfig(Int8Config):
    """Settings of ``quant.qat``: those of ``quant.int8``, plus the fine-tuning.

    Attributes:
        epochs: epochs of quantization-aware fine-tuning (None: the run's fine-tuning budget).
        lr: learning rate; small by default, as the model is already trained (None: the
            run's fine-tuning learning rate).
        distill: learn from the original model's outputs as well as the labels.
        weight_rounding: ``nearest`` by default: the fine-tuning already learned weights
            for the simulated grid, and nearest rounding keeps what it learned.

    Example:
        >>> QATConfig(epochs=2).distill
        True
    """

    epochs: float | None = None
    lr: float | None = 1e-4
    distill: bool = True
    weight_rounding: str = "nearest"

    def validate(self) -> None:
        super().validate()
        if self.epochs is not None:
            check_positive("epochs", self.epochs, allow_zero=True)
        if self.lr is not None:
            check_positive("lr", self.lr)


class QuantizationAwareTraining(StaticInt8):
    """Quantization-aware training: fine-tune under simulated int8, then run on an int8 engine.

    Example:
        >>> QuantizationAwareTraining().name
        'quant.qat'
    """

    name = "quant.qat"
    kind = "quantize"
    Config = QATConfig

    def prepare_float(self, model: nn.Module, config: Int8Config, ctx: Context,
                      batches: Sequence[Any]) -> nn.Module:
        """Fine-tune ``model`` with its layers simulated in int8; return it in float."""
        config = cast(QATConfig, config)  # this technique's Config: apply() is given a QATConfig
        epochs = ctx.finetune_epochs if config.epochs is None else config.epochs
        if epochs <= 0 or ctx.data is None or ctx.data.train is None:
            ctx.note("quantization-aware training", "skipped (no fine-tuning budget or no "
                     "training data): post-training quantization only")
            return model
        settings = config.settings()
        layers = quantizable_layers(model, config.skip)
        estimators = calibrate_inputs(model, layers, batches)
        ranges = {name: est.range(settings.calibration, levels=256,
                                  percentile=settings.percentile)
                  for name, est in estimators.items() if not est.empty}
        teacher = ctx.teacher if config.distill else None
        options: dict[str, Any] = {} if config.lr is None else {"lr": config.lr}
        with simulated(model, ranges, levels=256, per_channel=settings.per_channel):
            ctx.finetune(model, epochs=epochs, teacher=teacher, **options)
        ctx.note("quantization-aware training",
                 f"{epochs:g} epoch(s) with {len(ranges)} layer(s) simulated in int8"
                 + (", distilled from the original" if teacher is not None else ""))
        return model.cpu().eval()
