"""``quant.dynamic``: int8 weights, activations quantized on the fly, for Linear / LSTM / GRU.

Weights are stored in int8 (per output channel by default); each activation is quantized at
run time from its own range, so no calibration data is needed, the right default for
transformer encoders and recurrent networks on CPU. Three engines: ``onnxruntime`` (ORT's
integer MatMul kernels on the exported graph, after ORT's transformer fusions, its layer norms
rewritten as the plain reductions ORT runs faster: :mod:`sconce_quant.engines.ortnorm`), ``pt2e``
(torchao's ``X86InductorQuantizer``, compiled by inductor: oneDNN int8 matmuls, generated
code for the float operators around them; Linear only) and ``torch`` (torch.ao's dynamic
modules on fbgemm/oneDNN, deprecated upstream); ``auto`` builds each available one, checks
it against the float model and keeps the fastest. With ``max_accuracy_drop`` set, the layers
whose quantization costs most stay in float.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from sconce.context import Context
    >>> model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4)).eval()
    >>> ctx = Context.for_inputs(torch.randn(1, 16))
    >>> quantized = DynamicInt8().apply(model, DynamicConfig(engine="torch"), ctx)
    >>> type(quantized[0]).__name__
    'Linear'
    >>> type(quantized[0]).__module__
    'torch.ao.nn.quantized.dynamic.modules.linear'
"""

from __future__ import annotations

import copy
import logging
import tempfile
import warnings
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sconce.config import QuantizeConfig, check_choice, check_positive
from sconce.context import Context
from sconce.errors import ConfigError, ModelError
from sconce.evaluation import EvalResult
from sconce.sensitivity import Sensitivity, scan_sensitivity
from sconce.technique import Technique
from sconce_quant.engines.base import Built, EngineError, StaticSettings
from sconce_quant.engines.cuda import DTYPES, TorchaoCudaEngine
from sconce_quant.engines.ort import (
    attention_shape,
    module_of,
    preprocess,
    transformer_fusions,
)
from sconce_quant.engines.ortmodule import OrtModule, export_onnx_bytes
from sconce_quant.engines.ortnorm import decompose_layer_norms
from sconce_quant.engines.pt2e import Pt2eEngine
from sconce_quant.engines.select import Candidate, choose_engine
from sconce_quant.mixed import fit_budget
from sconce_quant.qparams import cpu_has_vnni
from sconce_quant.rnn import plain_state_rnns

logger = logging.getLogger(__name__)

DYNAMIC_TYPES: dict[str, type[nn.Module]] = {"Linear": nn.Linear, "LSTM": nn.LSTM,
                                             "GRU": nn.GRU}
ENGINE_CHOICES: tuple[str, ...] = ("auto", "onnxruntime", "pt2e", "torch", "torchao")


@dataclass
class DynamicConfig(QuantizeConfig):
    """Settings of ``quant.dynamic``.

    Attributes:
        bits: 8.
        engine: ``auto`` (measure every available engine, keep the fastest; on a CUDA model:
            ``torchao``), ``onnxruntime``, ``pt2e`` (torchao + inductor), ``torch``
            (torch.ao) or ``torchao`` (CUDA).
        per_channel: one weight scale per output channel (else one per tensor).
        layer_types: which layer types to quantize (``Linear``, ``LSTM``, ``GRU``).
        skip: layers (module names) to keep in float regardless.
        validation_samples: validation samples per evaluation when fitting an accuracy budget
            (default 10,000: with 2,000 the earlier stages' loss, measured again on the subset,
            moved by more than a tight budget and int8 was refused where it cost nothing).
        dtype: ``int8``, or ``fp8`` (float8 weights and activations: torchao on CUDA).

    Example:
        >>> DynamicConfig(engine="torch").layer_types
        ('Linear', 'LSTM', 'GRU')
    """

    engine: str = "auto"
    per_channel: bool = True
    layer_types: tuple[str, ...] = ("Linear", "LSTM", "GRU")
    skip: tuple[str, ...] = ()
    validation_samples: int = 10000
    dtype: str = "int8"

    def validate(self) -> None:
        super().validate()
        check_choice("bits", self.bits, (8,))
        check_choice("engine", self.engine, ENGINE_CHOICES)
        check_choice("dtype", self.dtype, DTYPES)
        if self.dtype == "fp8" and self.engine not in ("auto", "torchao"):
            raise ConfigError(f"dtype='fp8' runs on torchao's CUDA kernels only; use "
                              f"engine='auto' or 'torchao', not {self.engine!r}")
        for name in self.layer_types:
            check_choice("layer_types", name, tuple(DYNAMIC_TYPES))
        check_positive("validation_samples", self.validation_samples)


def dynamic_layers(model: nn.Module, config: DynamicConfig) -> list[str]:
    """Names of the layers of the configured types, minus ``skip``.

    Example:
        >>> dynamic_layers(nn.Sequential(nn.Linear(2, 2), nn.LSTM(2, 2)), DynamicConfig())
        ['0', '1']
    """
    types = tuple(DYNAMIC_TYPES[t] for t in config.layer_types)
    return [name for name, module in model.named_modules()
            if isinstance(module, types) and name not in config.skip]


class TorchDynamicEngine:
    """torch.ao dynamic quantization (fbgemm / oneDNN int8 GEMMs).

    Example:
        >>> TorchDynamicEngine(DynamicConfig()).unavailable() is None
        True
    """

    name = "torch"
    description = "torch.ao dynamic int8 (fbgemm/oneDNN)"

    def __init__(self, config: DynamicConfig) -> None:
        self.config = config

    def unavailable(self) -> str | None:
        try:
            from torch.ao.quantization import quantize_dynamic  # noqa: F401
        except ImportError as exc:
            return f"torch.ao.quantization is not available in this torch ({exc})"
        return None

    def prepare(self, model: nn.Module, batches: Sequence[Any], settings: Any
                ) -> _TorchDynamicPrepared:
        return _TorchDynamicPrepared(model, self.config)

    def restore(self, model: nn.Module, record: dict[str, Any]) -> nn.Module:
        return torch_dynamic(model, record["layers"], self.config.per_channel)


class _TorchDynamicPrepared:
    def __init__(self, model: nn.Module, config: DynamicConfig) -> None:
        self.model = model
        self.config = config

    def build(self, skip: Collection[str] = ()) -> Built:
        layers = [n for n in dynamic_layers(self.model, self.config) if n not in set(skip)]
        module = torch_dynamic(copy.deepcopy(self.model), layers, self.config.per_channel)
        return Built(module, {"layers": layers}, float_layers=sorted(skip))


def torch_dynamic(model: nn.Module, layers: Sequence[str], per_channel: bool) -> nn.Module:
    """torch.ao ``quantize_dynamic`` of exactly the named layers (in place).

    Example:
        >>> model = torch_dynamic(nn.Sequential(nn.Linear(4, 4)), ["0"], per_channel=True)
        >>> type(model[0]).__module__
        'torch.ao.nn.quantized.dynamic.modules.linear'
    """
    from torch.ao.quantization import (
        default_dynamic_qconfig,
        per_channel_dynamic_qconfig,
        quantize_dynamic,
    )

    modules = dict(model.named_modules())
    spec = {}
    for name in layers:
        linear = isinstance(modules[name], nn.Linear)
        spec[name] = per_channel_dynamic_qconfig if per_channel and linear \
            else default_dynamic_qconfig
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return plain_state_rnns(quantize_dynamic(  # type: ignore[no-untyped-call]  # untyped in torch
            model.eval(), spec, dtype=torch.qint8, inplace=True))


class OrtDynamicEngine:
    """ONNX Runtime dynamic quantization (integer MatMul kernels) of the exported graph.

    Example:
        >>> OrtDynamicEngine(DynamicConfig()).unavailable() is None
        True
    """

    name = "onnxruntime"
    description = "ONNX Runtime dynamic int8 (MLAS integer MatMul)"

    def __init__(self, config: DynamicConfig) -> None:
        self.config = config

    def unavailable(self) -> str | None:
        try:
            import onnx  # noqa: F401
            from onnxruntime.quantization import quantize_dynamic  # noqa: F401
        except ImportError as exc:
            return f"onnxruntime is not installed ({exc})"
        return None

    def prepare(self, model: nn.Module, batches: Sequence[Any], settings: Any
                ) -> _OrtDynamicPrepared:
        exported = export_onnx_bytes(model, batches[0])
        fused = transformer_fusions(exported, *attention_shape(model))
        graph, norms = decompose_layer_norms(fused if fused is not None else preprocess(exported))
        return _OrtDynamicPrepared(graph, self.config, fused=fused is not None, norms=norms)

    def restore(self, model: nn.Module, record: dict[str, Any]) -> nn.Module:
        return OrtModule.placeholder(int(record["nbytes"]), input_names=record["inputs"],
                                     output_names=record["outputs"])


class _OrtDynamicPrepared:
    def __init__(self, float_bytes: bytes, config: DynamicConfig, *, fused: bool,
                 norms: int) -> None:
        self.float_bytes = float_bytes
        self.config = config
        self.fused = fused
        self.norms = norms

    def build(self, skip: Collection[str] = ()) -> Built:
        import onnx
        from onnxruntime.quantization import QuantType, quantize_dynamic

        graph = onnx.load_from_string(self.float_bytes).graph
        excluded = set(skip) | set(self.config.skip)
        exclude = [n.name for n in graph.node if module_of(n.name) in excluded]
        ops = ["MatMul", "Gemm", "Attention"] if "Linear" in self.config.layer_types else []
        ops += ["LSTM"] if "LSTM" in self.config.layer_types else []
        with tempfile.TemporaryDirectory(prefix="sconce-ort-") as folder:
            source, target = Path(folder) / "float.onnx", Path(folder) / "int8.onnx"
            source.write_bytes(self.float_bytes)
            try:
                quantize_dynamic(str(source), str(target), per_channel=self.config.per_channel,
                                 reduce_range=not cpu_has_vnni(), weight_type=QuantType.QInt8,
                                 nodes_to_exclude=exclude, op_types_to_quantize=ops,
                                 extra_options={"MatMulConstBOnly": True,
                                                "DefaultTensorType": onnx.TensorProto.FLOAT})
            except Exception as exc:  # the quantizer raises many kinds of errors
                raise EngineError(f"onnxruntime cannot quantize this model dynamically: "
                                  f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}"
                                  ) from None
            quantized = target.read_bytes()
        proto = onnx.load_from_string(quantized)
        inputs = [i.name for i in proto.graph.input]
        outputs = [o.name for o in proto.graph.output]
        module = OrtModule(quantized, input_names=inputs, output_names=outputs)
        record = {"nbytes": len(quantized), "inputs": inputs, "outputs": outputs,
                  "transformer_fusions": self.fused, "decomposed_layer_norms": self.norms}
        return Built(module, record, float_layers=sorted(skip))


class Pt2eDynamicEngine:
    """torchao PT2E dynamic int8 of the Linear layers, compiled by inductor (oneDNN); the
    float operators around them (normalizations, softmax, GELU) become generated C++.

    Example:
        >>> Pt2eDynamicEngine(DynamicConfig()).name
        'pt2e'
    """

    name = "pt2e"

    def __init__(self, config: DynamicConfig) -> None:
        self.config = config
        self.engine = Pt2eEngine(dynamic=True)
        self.description = self.engine.description

    def settings(self) -> StaticSettings:
        """Per-channel or per-tensor weights as configured; 7-bit activations without VNNI."""
        return StaticSettings(per_channel=self.config.per_channel,
                              reduce_range=not cpu_has_vnni())

    def unavailable(self) -> str | None:
        if "Linear" not in self.config.layer_types:
            return "the PT2E dynamic engine quantizes Linear layers only"
        return self.engine.unavailable()

    def prepare(self, model: nn.Module, batches: Sequence[Any], settings: Any) -> Any:
        return self.engine.prepare(model, batches, self.settings())

    def restore(self, model: nn.Module, record: dict[str, Any]) -> nn.Module:
        return self.engine.restore(model, record, self.settings())


def _device_of(model: nn.Module) -> torch.device:
    for param in model.parameters():
        return param.device
    return torch.device("cpu")


class DynamicInt8(Technique):
    """Dynamic int8: int8 weights, activations quantized at run time (Linear, LSTM, GRU).

    Example:
        >>> DynamicInt8().name, DynamicInt8().Config().engine
        ('quant.dynamic', 'auto')
    """

    name = "quant.dynamic"
    kind = "quantize"
    Config = DynamicConfig

    def apply(self, model: nn.Module, config: DynamicConfig, ctx: Context) -> nn.Module:
        device = _device_of(model)
        cuda = device.type == "cuda" and config.engine in ("auto", "torchao")
        if not cuda:
            device = torch.device("cpu")
        model = model.to(device).eval()
        engines = self._engines(config, cuda=cuda)
        batch = ctx.adapter.to_device(ctx.example_inputs(8), device)
        timing: dict[int, Any] = {}
        if len(engines) > 1:
            timing = {1: ctx.adapter.to_device(ctx.example_inputs(1), device),
                      ctx.timing.batch_size: ctx.adapter.to_device(
                          ctx.example_inputs(ctx.timing.batch_size), device)}
        with torch.no_grad():
            chosen, tried = choose_engine(engines, model, [batch], None,  # type: ignore[arg-type]
                                          skip=config.skip, timing_inputs=timing,
                                          threads=ctx.timing.threads)
        assert chosen.built is not None and chosen.prepared is not None
        built = chosen.built
        budget = ctx.limit("max_accuracy_drop")  # points lost against the original
        if isinstance(budget, float) and ctx.data is not None:
            prepared = chosen.prepared
            result = fit_budget(
                model, ctx, lambda extra: prepared.build([*config.skip, *extra]), built,
                lambda: self._sensitivity(model, config, ctx),
                max_drop=budget, samples=config.validation_samples)
            assert result.built is not None
            built = result.built
            if result.kept_float:
                ctx.note("kept in float (accuracy budget)", ", ".join(result.kept_float))
            ctx.note("accuracy budget", f"validation accuracy {result.accuracy:.2f} vs target "
                     f"{result.target:.2f}: {'met' if result.met else 'NOT met'}")
        self._note(chosen, tried, built, config, ctx)
        ctx.set_restore_record({"engine": chosen.engine.name, **built.record})
        return built.module

    def restore(self, model: nn.Module, config: DynamicConfig, record: dict[str, Any]
                ) -> nn.Module:
        """Rebuild the dynamic int8 structure on a fresh float model."""
        cuda = record["engine"] == "torchao"
        engine = next((e for e in self._engines(config.replace(engine="auto"), cuda=cuda)
                       if e.name == record["engine"]), None)
        reason = engine.unavailable() if engine is not None else "unknown engine"
        if engine is None or reason:
            raise ModelError(f"this model was quantized with the {record['engine']!r} dynamic "
                             f"int8 engine, which cannot run here: {reason}")
        return engine.restore(model.eval() if cuda else model.cpu().eval(), record)

    @staticmethod
    def _engines(config: DynamicConfig, *, cuda: bool = False) -> list[Any]:
        if cuda or config.engine == "torchao":
            engines: list[Any] = [TorchaoCudaEngine(config.dtype)]
        else:
            engines = [OrtDynamicEngine(config), Pt2eDynamicEngine(config),
                       TorchDynamicEngine(config)]
        if config.engine != "auto":
            engines = [e for e in engines if e.name == config.engine]
            reason = engines[0].unavailable()
            if reason:
                raise EngineError(f"dynamic int8 engine {config.engine!r} is not available: "
                                  f"{reason}")
        return engines

    def _sensitivity(self, model: nn.Module, config: DynamicConfig, ctx: Context
                     ) -> Sensitivity:
        """Each layer quantized alone (torch engine) on the validation split."""

        def evaluate(chosen: Mapping[str, float]) -> EvalResult:
            quantized = torch_dynamic(copy.deepcopy(model), list(chosen),
                                      config.per_channel) if chosen else model
            return ctx.evaluate(quantized, "val", config.validation_samples)

        return scan_sensitivity(dynamic_layers(model, config), evaluate, ratios=(1.0,))

    @staticmethod
    def _note(chosen: Candidate, tried: list[Candidate], built: Built, config: DynamicConfig,
              ctx: Context) -> None:
        engine = f"{chosen.engine.name} ({chosen.engine.description})"
        if len(tried) > 1:
            engine += "; auto, measured: " + "; ".join(c.summary() for c in tried)
        ctx.note("int8 engine", engine)
        ctx.note("weights", f"{config.dtype}, "
                 + ("per-channel" if config.per_channel else "per-tensor"))
        if built.record.get("transformer_fusions"):
            ctx.note("graph", "ONNX Runtime transformer fusions (attention, layer norm, gelu) "
                     "before quantization")
        if built.record.get("decomposed_layer_norms"):
            ctx.note("layer norms", f"{built.record['decomposed_layer_norms']} as plain "
                     "reductions (ONNX Runtime's vectorized kernels, ~2x its fused kernel)")
        if config.skip:
            ctx.note("kept in float (skip)", ", ".join(config.skip))
