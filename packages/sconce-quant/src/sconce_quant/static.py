"""``quant.int8``: static post-training int8 on a real int8 engine, chosen by measurement.

Per-channel symmetric int8 weights, uint8 activations calibrated on real data (min-max,
percentile or MSE), batch norms folded into convolutions and operators fused by the engine;
the result runs on ONNX Runtime's or torch.ao's int8 kernels (``engine="auto"`` builds both,
checks them against the float model and keeps the faster one here). Layers the engine cannot
quantize stay in float and are named in the report; with ``max_accuracy_drop`` set, the layers
whose quantization costs most stay in float until the budget holds.

Example:
    >>> import sconce
    >>> result = sconce.compress(sconce.models.demo_cnn(in_channels=1, image_size=8), "digits",
    ...                          recipe=["quant.int8"])  # doctest: +SKIP
    >>> result.report.stages[-1].notes["int8 engine"]  # doctest: +SKIP
    'onnxruntime (...)'
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from sconce.config import QuantizeConfig, check_choice, check_positive, check_range
from sconce.context import Context
from sconce.errors import DataError, ModelError
from sconce.plotting import save_png
from sconce.sensitivity import plot_sensitivity
from sconce.technique import Technique
from sconce_quant.calibration import CALIBRATION_METHODS
from sconce_quant.engines import ENGINES, EngineError, StaticSettings, choose_engine, get_engine
from sconce_quant.engines.base import WEIGHT_ROUNDINGS, Built
from sconce_quant.engines.select import Candidate
from sconce_quant.mixed import BudgetResult, fit_budget, layer_sensitivity
from sconce_quant.qparams import cpu_has_vnni
from sconce_quant.simulate import quantizable_layers

logger = logging.getLogger(__name__)

ENGINE_CHOICES: tuple[str, ...] = ("auto", *ENGINES)


@dataclass
class Int8Config(QuantizeConfig):
    """Settings of ``quant.int8``.

    Attributes:
        bits: 8 (the only width int8 engines run).
        engine: ``auto`` (measure every available engine, keep the fastest), ``onnxruntime``
            or ``fx`` (torch.ao).
        calibration: how activation ranges are chosen: ``mse`` (least quantization error),
            ``percentile`` or ``minmax``.
        percentile: for ``percentile``: the share of values kept inside the range.
        calibration_samples: calibration inputs to use.
        per_channel: one weight scale per output channel (else one per tensor).
        reduce_range: 7-bit values on one side of each int8 product, needed for exact results
            on CPUs without VNNI; None decides from this CPU.
        weight_rounding: ``gptq`` (each layer's weights rounded so its output on the
            calibration inputs moves least; the ONNX Runtime engine, whose weights get 7 bits
            without VNNI) or ``nearest``.
        skip: layers (module names) to keep in float regardless.
        validation_samples: validation samples per evaluation when fitting an accuracy budget
            (default 10,000: with 2,000 the earlier stages' loss, measured again on the subset,
            moved by more than a tight budget and int8 was refused where it cost nothing).

    Example:
        >>> Int8Config(engine="fx", calibration="percentile").settings().calibration
        'percentile'
    """

    engine: str = "auto"
    calibration: str = "mse"
    percentile: float = 99.99
    calibration_samples: int = 512
    per_channel: bool = True
    reduce_range: bool | None = None
    skip: tuple[str, ...] = ()
    validation_samples: int = 10000
    weight_rounding: str = "gptq"

    def validate(self) -> None:
        super().validate()
        check_choice("bits", self.bits, (8,))
        check_choice("engine", self.engine, ENGINE_CHOICES)
        check_choice("calibration", self.calibration, CALIBRATION_METHODS)
        check_choice("weight_rounding", self.weight_rounding, WEIGHT_ROUNDINGS)
        check_range("percentile", self.percentile, 90.0, 100.0)
        check_positive("calibration_samples", self.calibration_samples)
        check_positive("validation_samples", self.validation_samples)

    def settings(self) -> StaticSettings:
        """The engine settings (``reduce_range`` resolved for this CPU)."""
        reduce = (not cpu_has_vnni()) if self.reduce_range is None else bool(self.reduce_range)
        return StaticSettings(self.calibration, self.percentile, self.per_channel, reduce,
                              self.weight_rounding)


def calibration_batches(ctx: Context, samples: int, technique: str) -> list[Any]:
    """The calibration inputs on the CPU, as a list (several passes use them).

    Raises:
        DataError: there is no data, or the calibration split yields nothing.

    Example:
        >>> calibration_batches(ctx, 512, "quant.int8")  # doctest: +SKIP
        [tensor(...), ...]
    """
    try:
        batches = [ctx.adapter.to_device(batch, "cpu")
                   for batch in ctx.calibration_inputs(samples)]
    except DataError as exc:
        raise DataError(f"{technique} calibrates activations on real inputs: {exc}") from None
    return batches


class StaticInt8(Technique):
    """Static int8: calibrated activations, per-channel weights, on a real int8 engine.

    Example:
        >>> StaticInt8().name, StaticInt8().kind
        ('quant.int8', 'quantize')
    """

    name = "quant.int8"
    kind = "quantize"
    Config = Int8Config

    def apply(self, model: nn.Module, config: Int8Config, ctx: Context) -> nn.Module:
        model = model.cpu().eval()
        batches = calibration_batches(ctx, config.calibration_samples, self.name)
        model = self.prepare_float(model, config, ctx, batches)
        settings = config.settings()
        chosen, tried = self._choose(model, config, ctx, batches, settings)
        assert chosen.built is not None and chosen.prepared is not None
        built = chosen.built
        budget = ctx.limit("max_accuracy_drop")  # points lost against the original
        if isinstance(budget, float) and ctx.data is not None:
            prepared = chosen.prepared
            levels = 128 if settings.reduce_range and chosen.engine.name == "fx" else 256
            result = fit_budget(
                model, ctx, lambda extra: prepared.build([*config.skip, *extra]), built,
                lambda: layer_sensitivity(
                    model, ctx, quantizable_layers(model, config.skip), batches, levels=levels,
                    per_channel=settings.per_channel, calibration=settings.calibration,
                    percentile=settings.percentile, samples=config.validation_samples),
                max_drop=budget, samples=config.validation_samples)
            assert result.built is not None
            self._note_budget(result, ctx)
            built = result.built
        self._note(chosen, tried, built, settings, config, ctx, len(batches))
        ctx.set_restore_record({"engine": chosen.engine.name, "settings": settings.to_dict(),
                                **built.record})
        return built.module

    def prepare_float(self, model: nn.Module, config: Int8Config, ctx: Context,
                      batches: Sequence[Any]) -> nn.Module:
        """Change the float model before it is quantized (nothing here; QAT fine-tunes)."""
        return model

    def restore(self, model: nn.Module, config: Int8Config, record: dict[str, Any]
                ) -> nn.Module:
        """Rebuild the int8 structure on a fresh float model (weights come from the state dict)."""
        try:
            engine = get_engine(record["engine"])
        except EngineError as exc:
            raise ModelError(f"this model was quantized with the {record['engine']!r} int8 "
                             f"engine, which cannot run here: {exc}") from None
        settings = StaticSettings(**record["settings"])
        return engine.restore(model.cpu().eval(), record, settings)

    def _choose(self, model: nn.Module, config: Int8Config, ctx: Context,
                batches: Sequence[Any], settings: StaticSettings
                ) -> tuple[Candidate, list[Candidate]]:
        if config.engine == "auto":
            engines = list(ENGINES.values())
            timing = {1: ctx.example_inputs(1)}
            timing[ctx.timing.batch_size] = ctx.example_inputs(ctx.timing.batch_size)
            timing = {b: ctx.adapter.to_device(x, "cpu") for b, x in timing.items()}
        else:
            engines, timing = [get_engine(config.engine)], {}
        with torch.no_grad():
            return choose_engine(engines, model, batches, settings, skip=config.skip,
                                 timing_inputs=timing, threads=ctx.timing.threads)

    def _note(self, chosen: Candidate, tried: list[Candidate], built: Built,
              settings: StaticSettings, config: Int8Config, ctx: Context, count: int) -> None:
        engine = f"{chosen.engine.name} ({chosen.engine.description})"
        if len(tried) > 1:
            engine += "; auto, measured: " + "; ".join(c.summary() for c in tried)
        ctx.note("int8 engine", engine)
        ctx.note("calibration", f"{settings.calibration} on {count} batch(es); "
                 f"{'per-channel' if settings.per_channel else 'per-tensor'} symmetric weights"
                 + ("; reduce_range (no VNNI)" if settings.reduce_range else ""))
        rounded = built.record.get("gptq_rounded_layers")
        if rounded:
            ctx.note("weight rounding", f"GPTQ on {rounded} layer(s), onto the "
                     f"{7 if settings.reduce_range else 8}-bit grid the engine quantizes to")
        engine_float = [op for op in built.float_ops
                        if not any(op.startswith(layer) for layer in built.float_layers)]
        if built.record.get("float_stem"):
            ctx.note("kept in float (thin first convolution, faster than int8)",
                     ", ".join(built.record["float_stem"]))
        if engine_float:
            ctx.note("left in float (engine cannot quantize)", ", ".join(engine_float))
        if config.skip:
            ctx.note("kept in float (skip)", ", ".join(config.skip))

    def _note_budget(self, result: BudgetResult, ctx: Context) -> None:
        if result.kept_float and result.sensitivity is not None:
            drops = result.sensitivity.drops()
            sensitivity = ", ".join(f"{name} ({drops.get(name, 0.0):+.2f} pts)"
                                    for name in result.kept_float)
            ctx.note("kept in float (accuracy budget)", sensitivity)
            figure = plot_sensitivity(result.sensitivity,
                                      chosen={name: 1.0 for name in result.kept_float},
                                      title="int8 sensitivity per layer (red: kept in float)")
            save_png(figure, ctx.artifact_path("quant_sensitivity.png"), dpi=120)
        status = "met" if result.met else "NOT met even with every layer listed in float"
        ctx.note("accuracy budget", f"validation accuracy {result.accuracy:.2f} vs target "
                 f"{result.target:.2f}: {status}")
