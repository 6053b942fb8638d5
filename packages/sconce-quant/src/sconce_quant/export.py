"""Export a quantized model to an ONNX file that ONNX Runtime runs without sconce.

ONNX Runtime int8 models are already ONNX: their bytes are written as they are. PT2E int8
models export their converted quantize/dequantize graph (before inductor) through torch's
``torch.export``-based exporter, as a QDQ graph that ONNX Runtime fuses into its own int8
kernels (``quant.dynamic``'s PT2E models have no ONNX export: torch's exporter cannot
convert their run-time activation quantization). torch.ao static int8 models and weight-only
models are exported by torch's exporter (int8 operators become QuantizeLinear / QLinearConv
/ ... nodes; weight-only layers dequantize their codes with standard operators), float
models too; ONNX's uint8 QuantizeLinear saturates at 255 where torch.ao's and PT2E's 7-bit
(reduce_range) activations saturate at 127, so values beyond a calibrated range pass a
little further. torch.ao dynamic int8 layers have no ONNX export in torch: their int8
weights are dequantized and quantized again by ONNX Runtime's dynamic quantizer (same per-
channel or per-tensor layout; a code can differ by one where the two libraries' symmetric
scales differ).

Example:
    >>> import tempfile, torch
    >>> from torch import nn
    >>> path = export_onnx(nn.Linear(4, 2), tempfile.mkdtemp() + "/model.onnx", torch.randn(1, 4))
    >>> path.suffix
    '.onnx'
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sconce.storage import atomic_write_bytes
from sconce_quant.engines.base import EngineError
from sconce_quant.engines.ortmodule import OrtModule, export_onnx_bytes
from sconce_quant.engines.pt2e import Pt2eModule
from sconce_quant.modules import WeightOnlyLinear

logger = logging.getLogger(__name__)


def export_onnx(model: nn.Module, path: str | Path, example_inputs: Any) -> Path:
    """Write ``model`` as ONNX to ``path`` (atomically) and return the path.

    Args:
        model: a model from any sconce-quant technique, or a float model.
        path: the ``.onnx`` file to write.
        example_inputs: one batch of inputs (a tensor or a tuple), to trace the model with.

    Raises:
        EngineError: torch's exporters cannot export the model.

    Example:
        >>> import tempfile, torch
        >>> export_onnx(nn.Linear(4, 2), tempfile.mkdtemp() + "/m.onnx", torch.randn(1, 4)).name
        'm.onnx'
    """
    path = Path(path)
    if isinstance(model, OrtModule):
        data = model.onnx_bytes()
    elif isinstance(model, Pt2eModule):  # its quantize/dequantize graph becomes QDQ ONNX
        if _quantizes_at_run_time(model.graph_module):
            raise EngineError("a quant.dynamic PT2E model has no ONNX export (torch's exporter "
                              "cannot convert its run-time activation quantization); use "
                              "quant.dynamic with engine='onnxruntime' for an ONNX model")
        data = export_onnx_bytes(model.graph_module, example_inputs)
    elif _has_torch_dynamic(model):
        data = _requantized_dynamic(model, example_inputs)
    else:
        for layer in model.modules():  # the exported graph unpacks sconce's own packing
            if isinstance(layer, WeightOnlyLinear):
                layer.use_portable_layout()
        data = export_onnx_bytes(model.eval(), example_inputs)
    atomic_write_bytes(path, data)
    logger.info("wrote %s (%d bytes)", path, len(data))
    return path


def _quantizes_at_run_time(graph: torch.fx.GraphModule) -> bool:
    return any("choose_qparams" in str(node.target) for node in graph.graph.nodes)


def _has_torch_dynamic(model: nn.Module) -> bool:
    try:
        from torch.ao.nn.quantized.dynamic.modules.linear import Linear as DynamicLinear
        from torch.ao.nn.quantized.dynamic.modules.rnn import RNNBase
    except ImportError:  # a torch without torch.ao has no such layers
        return False

    return any(isinstance(m, (DynamicLinear, RNNBase)) for m in model.modules())


def _requantized_dynamic(model: nn.Module, example_inputs: Any) -> bytes:
    """The dynamic int8 model as ONNX: float twin exported, then ORT dynamic quantization."""
    from sconce_quant.dynamic import DynamicConfig, OrtDynamicEngine

    twin, per_channel = float_twin(model)
    config = DynamicConfig(engine="onnxruntime", per_channel=per_channel)
    prepared = OrtDynamicEngine(config).prepare(twin, [example_inputs], None)
    built = prepared.build()
    assert isinstance(built.module, OrtModule)
    return built.module.onnx_bytes()


def float_twin(model: nn.Module) -> tuple[nn.Module, bool]:
    """A copy of ``model`` whose torch.ao dynamic int8 layers are float layers holding the
    dequantized int8 weights; and whether any weight was per-channel.

    Example:
        >>> from sconce_quant.dynamic import torch_dynamic
        >>> twin, per_channel = float_twin(torch_dynamic(nn.Sequential(nn.Linear(4, 2)), ["0"],
        ...                                              per_channel=True))
        >>> type(twin[0]).__name__, per_channel
        ('Linear', True)
    """
    from torch.ao.nn.quantized.dynamic.modules.linear import Linear as DynamicLinear
    from torch.ao.nn.quantized.dynamic.modules.rnn import RNNBase

    twin = copy.deepcopy(model)
    per_channel = False
    for name, module in list(twin.named_modules()):
        if isinstance(module, DynamicLinear):
            weight, bias = module.weight(), module.bias()  # type: ignore[no-untyped-call]  # untyped in torch
            per_channel |= weight.qscheme() in (torch.per_channel_affine,
                                                torch.per_channel_symmetric)
            linear = nn.Linear(module.in_features, module.out_features, bias=bias is not None)
            with torch.no_grad():
                linear.weight.copy_(weight.dequantize())
                if bias is not None:
                    linear.bias.copy_(bias)
            twin.set_submodule(name, linear)
        elif isinstance(module, RNNBase):
            float_cls = nn.LSTM if module.mode == "LSTM" else nn.GRU
            rnn = float_cls(module.input_size, module.hidden_size, module.num_layers,
                            bias=module.bias, batch_first=module.batch_first,
                            dropout=float(module.dropout), bidirectional=module.bidirectional)
            values = module._weight_bias()  # type: ignore[no-untyped-call]  # untyped in torch
            with torch.no_grad():
                for group in values.values():
                    for key, tensor in group.items():
                        target = getattr(rnn, key)
                        target.copy_(tensor.dequantize() if tensor.is_quantized else tensor)
            twin.set_submodule(name, rnn)
    return twin.eval(), per_channel
