"""True storage of quantized modules, for the core's params / non-zero / size metrics.

The core counts dense parameters and buffers; quantized modules keep their weights where it
cannot see them: torch.ao's quantized layers in packed-parameter objects, an ONNX Runtime
int8 model inside one serialized buffer, weight-only layers as packed codes plus scales, a
PT2E graph as int8 buffers. :func:`quantized_footprint` answers for those (the
``sconce_module_footprint`` hook).

Example:
    >>> import torch
    >>> from sconce_quant.modules import WeightOnlyLinear
    >>> layer = WeightOnlyLinear(256, 4, bits=4, group_size=128, bias=False)
    >>> quantized_footprint(layer)  # 4 rows of 128 bytes, 2 groups of fp16 scale + uint8 zero
    Footprint(params=1024, nonzero=0, nbytes=536)
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from functools import lru_cache

import numpy as np
import torch
from torch import nn

from sconce.footprint import Footprint, default_module_footprint, tensor_nbytes, tensor_nonzero
from sconce_quant.engines.ortmodule import OrtModule
from sconce_quant.engines.pt2e import Pt2eModule
from sconce_quant.modules import WeightOnlyLinear

logger = logging.getLogger(__name__)

_TORCH_QUANTIZED = ("torch.ao.nn.quantized", "torch.ao.nn.intrinsic.quantized")
# inputs that are scales or zero points, by operator (ONNX and ONNX Runtime's integer ops)
_QPARAM_INPUTS: dict[str, tuple[int, ...]] = {
    "QuantizeLinear": (1, 2), "DequantizeLinear": (1, 2), "MatMulInteger": (2, 3),
    "ConvInteger": (2, 3), "DynamicQuantizeMatMul": (2, 3), "MatMulIntegerToFloat": (2, 3, 4, 5),
    "DynamicQuantizeLSTM": (8, 9, 10, 11),
}
_INTEGER_PRODUCERS = ("Cast", "MatMulInteger", "DynamicQuantizeLinear")


def quantized_footprint(module: nn.Module) -> Footprint | None:
    """The footprint of a quantized module, or None for modules the default counts right.

    Example:
        >>> quantized_footprint(nn.Linear(2, 2)) is None  # a float layer: the default counts it
        True
    """
    if isinstance(module, WeightOnlyLinear):
        return _weight_only(module)
    if isinstance(module, OrtModule):
        return onnx_footprint(module.onnx_bytes())
    if isinstance(module, Pt2eModule):
        return _pt2e_weights(module)
    if any(cls.__module__.startswith(_TORCH_QUANTIZED) for cls in type(module).__mro__):
        return _torch_quantized(module)
    return None


def _weight_only(layer: WeightOnlyLinear) -> Footprint:
    zeros = layer.zeros.to(torch.int16).repeat_interleave(layer.group_size, dim=1)
    nonzero = int((layer.codes().to(torch.int16) != zeros[:, :layer.in_features]).sum())
    params = layer.in_features * layer.out_features
    nbytes = sum(tensor_nbytes(t) for t in (layer.qweight, layer.scales, layer.zeros))
    if layer.bias is not None:
        params += layer.bias.numel()
        nonzero += tensor_nonzero(layer.bias)
        nbytes += tensor_nbytes(layer.bias)
    return Footprint(params, nonzero, nbytes)


def _pt2e_weights(module: Pt2eModule) -> Footprint:
    """A PT2E graph keeps its int8 weights as buffers, which the core counts as bytes only
    (as it does the scales and zero points beside them, and the float parameters as
    parameters): they are added here as weight values, without bytes."""
    weights = [t for _, t in module.graph_module.named_buffers() if t.dtype == torch.int8]
    return Footprint(sum(t.numel() for t in weights), sum(tensor_nonzero(t) for t in weights), 0)


def _torch_quantized(module: nn.Module) -> Footprint | None:
    """torch.ao quantized layers: the packed weight (int8 values, per-channel scales and zero
    points as stored) and bias, plus the output scale and zero point."""
    if type(module).__name__.endswith("PackedParams"):
        return Footprint()  # the packed weights of a layer: its parent layer counts them
    tensors: list[torch.Tensor] = []
    if callable(getattr(module, "weight", None)):  # conv / linear: packed weight and bias
        tensors = [module.weight()]  # type: ignore[operator]
        bias = module.bias() if callable(getattr(module, "bias", None)) else None  # type: ignore[operator]
        if isinstance(bias, torch.Tensor):
            tensors.append(bias)
    elif callable(getattr(module, "_weight_bias", None)):  # dynamic LSTM / GRU
        tensors = list(_tensors(module._weight_bias()))  # type: ignore[operator]
    if not tensors:
        return None  # no packed weights (quantized ReLU, pooling, ...): nothing hidden
    params = sum(t.numel() for t in tensors)
    nonzero = sum(tensor_nonzero(t) for t in tensors)
    nbytes = sum(tensor_nbytes(t) for t in tensors)
    if hasattr(module, "scale") and hasattr(module, "zero_point"):
        nbytes += 8 + 8  # output scale (float64) and zero point (int64), as saved
    own = default_module_footprint(module)
    return Footprint(params + own.params, nonzero + own.nonzero, nbytes + own.nbytes)


def _tensors(value: object) -> Iterator[torch.Tensor]:
    """Every tensor in nested dicts, lists and tuples."""
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _tensors(item)


@lru_cache(maxsize=8)
def onnx_footprint(onnx_bytes: bytes) -> Footprint:
    """Weights of an ONNX model: every initializer counts as bytes; those that are not scales,
    zero points or shapes count as parameters (non-zero: not equal to their zero point).

    Example:
        >>> from sconce_quant.engines.ortmodule import export_onnx_bytes
        >>> onnx_footprint(export_onnx_bytes(nn.Linear(100, 10), (torch.randn(1, 100),)))
        Footprint(params=1010, nonzero=1010, nbytes=4040)
    """
    import onnx
    from onnx import numpy_helper

    graph = onnx.load_from_string(onnx_bytes).graph
    arrays = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    producer = {out: node.op_type for node in graph.node for out in node.output}
    qparams: set[str] = set()
    zero_of: dict[str, tuple[np.ndarray, int]] = {}
    for node in graph.node:
        qparams.update(node.input[i] for i in _QPARAM_INPUTS.get(node.op_type, ())
                       if i < len(node.input))
        if node.op_type == "Mul" and any(producer.get(i) in _INTEGER_PRODUCERS
                                         for i in node.input):
            qparams.update(node.input)  # the rescale around an integer MatMul
        if node.op_type == "DequantizeLinear" and node.input[0] in arrays:
            axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
            zero = arrays.get(node.input[2]) if len(node.input) > 2 else None
            zero_of[node.input[0]] = (np.zeros(1) if zero is None else zero, axis)
    zero_of.update({name: (np.zeros(1), 0) for name in arrays if name not in zero_of})
    params = nonzero = nbytes = 0
    for name, array in arrays.items():
        nbytes += array.nbytes
        if name in qparams or array.dtype == np.int64 or array.ndim == 0:
            continue  # scales, zero points, shapes
        zero, axis = zero_of[name]
        shape = [1] * array.ndim
        if zero.size > 1:
            shape[axis] = -1
        nonzero += int(np.count_nonzero(array.astype(np.float64) - zero.reshape(shape)))
        params += array.size
    return Footprint(params, nonzero, nbytes)
