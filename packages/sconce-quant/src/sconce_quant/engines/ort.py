"""The ONNX Runtime engine: QDQ int8 models run by ORT's MLAS int8 kernels.

The float model (batch norms folded by ORT's pre-processing) is exported to ONNX once; every
float tensor in the graph is calibrated with sconce's :class:`RangeEstimator` by running the
graph with those tensors as extra outputs; with ``weight_rounding="gptq"`` (the default) the
same pass sums each weighted layer's input Hessian and the weights are GPTQ-rounded onto the
grid ORT will use (:mod:`sconce_quant.engines.ortgptq`). ONNX Runtime's quantizer then writes
a QDQ model with those ranges (per-channel symmetric int8 weights, uint8 activations), which
ORT fuses into integer kernels (QLinearConv, QGemm, int8 pooling) at session creation.

Example:
    >>> engine = OrtEngine()
    >>> engine.unavailable() is None or isinstance(engine.unavailable(), str)
    True
"""

from __future__ import annotations

import inspect
import logging
import tempfile
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from sconce_quant.calibration import RangeEstimator
from sconce_quant.engines.base import Built, EngineError, StaticSettings, as_args
from sconce_quant.engines.ortgptq import (
    HessianCollector,
    WeightSite,
    gptq_weights,
    replace_weights,
    weight_sites,
)
from sconce_quant.engines.ortmodule import OrtModule, export_onnx_bytes, make_session
from sconce_quant.engines.ortstem import float_stem

logger = logging.getLogger(__name__)

WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
# operators that only move or reshape data: never reported as "left in float"
_DATA_OPS = {"Shape", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Gather",
             "Concat", "Constant", "ConstantOfShape", "Cast", "Slice", "Split", "Identity",
             "Expand", "Range", "Equal", "Where", "MaxPool", "DequantizeLinear", "Dropout",
             "ReorderInput", "ReorderOutput"}
_INTEGER_OPS = {"MatMulInteger", "ConvInteger", "DynamicQuantizeMatMul", "MatMulIntegerToFloat",
                "DynamicQuantizeLinear", "DynamicQuantizeLSTM", "NhwcMaxPool"}
# how many graph tensors one calibration pass returns at once (bounds memory)
_TENSORS_PER_PASS = 64
# operators quantized: weighted ones, and those ORT runs in int8 between them; not
# embeddings (Gather), normalizations, softmax or masking arithmetic (Mul, Where)
STATIC_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul", "Relu", "Clip", "MaxPool",
              "AveragePool", "GlobalAveragePool", "Flatten", "Reshape", "Transpose", "Squeeze",
              "Unsqueeze", "Concat", "Add", "Resize", "Pad", "Split", "Slice")
# a tensor whose calibrated range is this wide (an attention mask's -3.4e38) has no useful
# 8-bit grid: the operators reading it stay in float
MAX_RANGE = 1e4


class OrtEngine:
    """ONNX Runtime QDQ int8 (MLAS kernels), exported through torch.onnx.

    Example:
        >>> OrtEngine().name
        'onnxruntime'
    """

    name = "onnxruntime"
    description = "ONNX Runtime QDQ int8 (MLAS kernels)"

    def unavailable(self) -> str | None:
        try:
            import onnx  # noqa: F401
            import onnxruntime  # noqa: F401
            from onnxruntime.quantization import quantize_static
        except ImportError as exc:
            return f"onnxruntime is not installed ({exc}); pip install onnx onnxruntime"
        if "calibration_cache_path" not in inspect.signature(quantize_static).parameters:
            return "this onnxruntime is too old (no calibration_cache_path); upgrade it"
        return None

    def prepare(self, model: nn.Module, batches: Sequence[Any], settings: StaticSettings
                ) -> OrtPrepared:
        if not batches:
            raise EngineError("no calibration batches")
        import onnx

        float_bytes = preprocess(export_onnx_bytes(model, batches[0]))
        collector = None
        if settings.weight_rounding == "gptq":
            collector = HessianCollector(weight_sites(onnx.load_from_string(float_bytes)))
        ranges = calibrate_onnx(float_bytes, batches, settings, hessians=collector)
        return OrtPrepared(float_bytes, ranges, settings,
                           collector.hessians() if collector is not None else {})

    def restore(self, model: nn.Module, record: dict[str, Any], settings: StaticSettings
                ) -> nn.Module:
        return OrtModule.placeholder(int(record["nbytes"]), input_names=record["inputs"],
                                     output_names=record["outputs"])


class OrtPrepared:
    """An exported, pre-processed and calibrated float ONNX model.

    Example:
        >>> model = nn.Sequential(nn.Linear(4, 4), nn.ReLU()).eval()
        >>> prepared = OrtEngine().prepare(model, [torch.randn(8, 4)], StaticSettings())
        >>> prepared.build().module(torch.randn(2, 4)).shape
        torch.Size([2, 4])
    """

    def __init__(self, float_bytes: bytes, ranges: dict[str, tuple[float, float]],
                 settings: StaticSettings,
                 hessians: dict[str, tuple[WeightSite, torch.Tensor]] | None = None) -> None:
        self.float_bytes = float_bytes
        self.ranges = ranges
        self.settings = settings
        self.hessians = hessians or {}
        self.stem = float_stem(float_bytes)  # the same for every build
        self._gptq: dict[str, tuple[str, np.ndarray]] | None = None  # rounded once, lazily

    def build(self, skip: Collection[str] = ()) -> Built:
        import onnx

        graph = onnx.load_from_string(self.float_bytes).graph
        wide = {name for name, (low, high) in self.ranges.items()
                if not max(abs(low), abs(high)) <= MAX_RANGE}
        stem = self.stem
        exclude = [node.name for node in graph.node
                   if (node.op_type in WEIGHTED_OPS and module_of(node.name) in set(skip))
                   or any(i in wide for i in node.input)] + stem.nodes
        source, rounded = stem.graph, 0
        if self.hessians:
            if self._gptq is None:
                self._gptq = gptq_weights(
                    self.float_bytes, self.hessians,
                    qmax=64 if self.settings.reduce_range else 127,
                    per_channel=self.settings.per_channel)
            source, rounded = replace_weights(stem.graph, self._gptq, exclude)
        quantized = quantize_qdq(source, self.ranges, self.settings, exclude)
        proto = onnx.load_from_string(quantized)
        inputs = [i.name for i in proto.graph.input]
        outputs = [o.name for o in proto.graph.output]
        module = OrtModule(quantized, input_names=inputs, output_names=outputs)
        record = {"nbytes": len(quantized), "inputs": inputs, "outputs": outputs,
                  "skip": sorted(skip), "gptq_rounded_layers": rounded,
                  "float_stem": stem.layers}
        chosen = set(stem.layers) - set(skip)  # float by the engine's choice, reported apart
        float_ops = [op for op in float_nodes(quantized) if op.split(" (")[0] not in chosen]
        return Built(module, record, float_ops=float_ops, float_layers=sorted(skip))


def preprocess(onnx_bytes: bytes) -> bytes:
    """ORT's quantization pre-processing: shape inference, batch-norm folding, clean-up.

    Example:
        >>> from sconce_quant.engines.ortmodule import export_onnx_bytes
        >>> len(preprocess(export_onnx_bytes(nn.Linear(2, 2), torch.randn(1, 2)))) > 0
        True
    """
    from onnxruntime.quantization import quant_pre_process

    with tempfile.TemporaryDirectory(prefix="sconce-ort-") as folder:
        source, target = Path(folder) / "float.onnx", Path(folder) / "pre.onnx"
        source.write_bytes(onnx_bytes)
        try:
            quant_pre_process(str(source), str(target), skip_symbolic_shape=True)
        except Exception as exc:  # pre-processing is an optimization; the raw export works too
            logger.info("onnxruntime pre-processing failed (%s); quantizing the raw export", exc)
            return onnx_bytes
        return target.read_bytes()


def attention_shape(model: nn.Module) -> tuple[int, int]:
    """``(heads, hidden size)`` from a transformers config in ``model``, else ``(0, 0)``.

    Example:
        >>> attention_shape(nn.Linear(2, 2))
        (0, 0)
    """
    for module in model.modules():
        config = getattr(module, "config", None)
        heads = getattr(config, "num_attention_heads", None)
        hidden = getattr(config, "hidden_size", None)
        if isinstance(heads, int) and isinstance(hidden, int):
            return heads, hidden
    return 0, 0


def transformer_fusions(onnx_bytes: bytes, heads: int = 0, hidden: int = 0) -> bytes | None:
    """ONNX Runtime's transformer fusions (multi-head Attention, SkipLayerNormalization,
    BiasGelu, embedding + LayerNorm) of a float graph, or None when nothing was fused.

    The fused graph runs faster, and its Attention operators quantize dynamically into ORT's
    integer attention kernel. Attention fusion needs the head count and hidden size
    (:func:`attention_shape`); 0 lets ORT guess them from the graph.

    Example:
        >>> from sconce_quant.engines.ortmodule import export_onnx_bytes
        >>> transformer_fusions(export_onnx_bytes(nn.Linear(2, 2), torch.randn(1, 2))) is None
        True
    """
    try:
        from onnxruntime.transformers.optimizer import optimize_model
    except ImportError:
        return None
    try:
        with tempfile.TemporaryDirectory(prefix="sconce-ort-") as folder:
            path = Path(folder) / "float.onnx"
            path.write_bytes(onnx_bytes)
            optimized = optimize_model(str(path), model_type="bert", num_heads=heads,
                                       hidden_size=hidden, opt_level=1)
            fused = sum(optimized.get_fused_operator_statistics().values())
            return optimized.model.SerializeToString() if fused else None
    except Exception as exc:  # the fusions are an optimization; the plain graph works
        logger.info("ONNX Runtime's transformer fusions failed (%s); using the plain graph",
                    exc)
        return None


def calibrate_onnx(onnx_bytes: bytes, batches: Sequence[Any], settings: StaticSettings, *,
                   hessians: HessianCollector | None = None) -> dict[str, tuple[float, float]]:
    """The clipping range of every float tensor of the graph over ``batches``; ``hessians``
    (when given) is fed the same values of the tensors it needs.

    Example:
        >>> from sconce_quant.engines.ortmodule import export_onnx_bytes
        >>> model = nn.Sequential(nn.Linear(2, 2), nn.ReLU())
        >>> onnx_bytes = export_onnx_bytes(model, torch.randn(1, 2))
        >>> ranges = calibrate_onnx(onnx_bytes, [torch.randn(8, 2)], StaticSettings())
        >>> all(low <= 0.0 <= high for low, high in ranges.values())
        True
    """
    import onnx

    model = onnx.load_from_string(onnx_bytes)
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v for v in [*inferred.graph.value_info, *inferred.graph.input,
                                 *inferred.graph.output]}
    initializers = {init.name for init in model.graph.initializer}
    names = [name for name, info in types.items()
             if name not in initializers
             and info.type.tensor_type.elem_type == onnx.TensorProto.FLOAT]
    estimators = {name: RangeEstimator() for name in names}
    graph_outputs = {o.name for o in model.graph.output}
    input_names = [i.name for i in model.graph.input if i.name not in initializers]
    for start in range(0, len(names), _TENSORS_PER_PASS):
        chunk = names[start:start + _TENSORS_PER_PASS]
        augmented = onnx.load_from_string(onnx_bytes)
        for name in chunk:
            if name not in graph_outputs:
                augmented.graph.output.append(types[name])
        session = make_session(augmented.SerializeToString(), torch.get_num_threads(),
                               optimize=False)
        for batch in batches:
            args = as_args(batch)
            if args[0].shape[0] == 0:
                continue  # an empty batch has nothing to observe
            feeds = {name: t.detach().cpu().contiguous().numpy()
                     for name, t in zip(input_names, args, strict=True)}
            for name, value in zip(chunk, session.run(chunk, feeds), strict=True):
                estimators[name].update(torch.from_numpy(np.asarray(value)))
                if hessians is not None and name in hessians.inputs:
                    hessians.update(name, value)
    return {name: est.range(settings.calibration, levels=256, percentile=settings.percentile)
            for name, est in estimators.items() if not est.empty}


def quantize_qdq(float_bytes: bytes, ranges: dict[str, tuple[float, float]],
                 settings: StaticSettings, exclude: Sequence[str]) -> bytes:
    """Quantize a float ONNX model to QDQ int8 with the given tensor ranges.

    Example:
        >>> from sconce_quant.engines.ortmodule import export_onnx_bytes
        >>> float_bytes = export_onnx_bytes(nn.Linear(4, 2), torch.randn(1, 4))
        >>> ranges = calibrate_onnx(float_bytes, [torch.randn(8, 4)], StaticSettings())
        >>> b"QuantizeLinear" in quantize_qdq(float_bytes, ranges, StaticSettings(), [])
        True
    """
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        TensorData,
        TensorsData,
        quantize_static,
        save_tensors_data,
    )

    data = TensorsData(CalibrationMethod.MinMax, {
        name: TensorData(lowest=np.array(low, dtype=np.float32),
                         highest=np.array(high, dtype=np.float32))
        for name, (low, high) in ranges.items()})
    with tempfile.TemporaryDirectory(prefix="sconce-ort-") as folder:
        source, target = Path(folder) / "float.onnx", Path(folder) / "int8.onnx"
        cache = Path(folder) / "ranges.json"
        source.write_bytes(float_bytes)
        save_tensors_data(data, cache)
        try:
            quantize_static(
                str(source), str(target), calibration_data_reader=None,
                quant_format=QuantFormat.QDQ, per_channel=settings.per_channel,
                reduce_range=settings.reduce_range, activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8, nodes_to_exclude=list(exclude),
                op_types_to_quantize=list(STATIC_OPS),
                calibrate_method=CalibrationMethod.MinMax, calibration_cache_path=str(cache),
                extra_options={"WeightSymmetric": True, "ActivationSymmetric": False})
        except Exception as exc:  # the quantizer raises many kinds of errors
            raise EngineError(f"onnxruntime cannot quantize this model: {type(exc).__name__}: "
                              f"{(str(exc).splitlines() or [''])[0]}") from None
        return target.read_bytes()


def module_of(node_name: str) -> str:
    """The qualified module name in a node name of torch's exporter, "" for the model's own
    operators. Scopes come either as full paths (``/features/features.0/features.0.0/Conv``)
    or as attribute names (``/encoder/layer.0/attention/self/query/MatMul``); ``model`` is the
    wrapper every export goes through.

    Example:
        >>> module_of("/model/features/features.0/features.0.0/Conv")
        'features.0.0'
        >>> module_of("/model/encoder/layer.0/attention/self/query/MatMul")
        'encoder.layer.0.attention.self.query'
        >>> module_of("/model/Erf"), module_of("/model/model.0/Gemm")
        ('', '0')
    """
    parts = [p for p in node_name.split("/") if p]
    if parts and parts[0] == "model":
        parts = parts[1:]
    name = ""
    for part in parts[:-1]:
        part = part.removeprefix("model.")
        name = part if not name or part.startswith(name + ".") else f"{name}.{part}"
    return name


def float_nodes(onnx_bytes: bytes) -> list[str]:
    """Compute operators ONNX Runtime runs in float in this model, as ``module (OpType)``.

    Read from the graph ORT actually executes (after its QDQ fusions): integer kernels are the
    ``Q*`` operators (QLinearConv, QGemm, ...), the ``*Integer`` ones and ORT's NHWC int8
    pooling; data-movement operators are never reported; any other operator computes in float.

    Example:
        >>> from sconce_quant.engines.ortmodule import export_onnx_bytes
        >>> float_nodes(export_onnx_bytes(nn.Sequential(nn.Linear(2, 2)), torch.randn(1, 2)))
        ['0 (Gemm)']
    """
    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="sconce-ort-") as folder:
        path = Path(folder) / "optimized.onnx"
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.optimized_model_filepath = str(path)
        options.log_severity_level = 3
        ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])
        graph = onnx.load(str(path)).graph
    found = []
    for node in graph.node:
        op = node.op_type
        if op in _DATA_OPS or op.startswith("Q") or op in _INTEGER_OPS:
            continue
        parts = [p for p in node.name.split("/") if p]
        label = module_of(node.name) or (parts[-1] if parts else op)
        found.append(f"{label} ({op})")
    return found
