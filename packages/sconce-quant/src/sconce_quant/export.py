"""Export a quantized model to an ONNX file that ONNX Runtime runs without sconce.

ONNX Runtime int8 models are already ONNX: their bytes are written as they are. torch.ao int8
models and weight-only models are exported by torch's exporter (int8 operators become
QuantizeLinear / QLinearConv / ... nodes; weight-only layers dequantize their codes with
standard operators), float models too.

Example:
    >>> import tempfile, torch
    >>> from torch import nn
    >>> path = export_onnx(nn.Linear(4, 2), tempfile.mkdtemp() + "/model.onnx", torch.randn(1, 4))
    >>> path.suffix
    '.onnx'
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from torch import nn

from sconce.storage import atomic_write_bytes
from sconce_quant.engines.ortmodule import OrtModule, export_onnx_bytes

logger = logging.getLogger(__name__)


def export_onnx(model: nn.Module, path: str | Path, example_inputs: Any) -> Path:
    """Write ``model`` as ONNX to ``path`` (atomically) and return the path.

    Args:
        model: a model from any sconce-quant technique, or a float model.
        path: the ``.onnx`` file to write.
        example_inputs: one batch of inputs (a tensor or a tuple), to trace the model with.

    Raises:
        EngineError: torch's exporters cannot export the model.
    """
    path = Path(path)
    if isinstance(model, OrtModule):
        data = model.onnx_bytes()
    else:
        data = export_onnx_bytes(model.eval(), example_inputs)
    atomic_write_bytes(path, data)
    logger.info("wrote %s (%d bytes)", path, len(data))
    return path
