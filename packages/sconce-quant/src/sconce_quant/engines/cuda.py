"""The CUDA engine of ``quant.dynamic``: torchao's int8 and float8 dynamic quantization.

On a GPU, ``quant.dynamic`` keeps the model where it is and swaps each Linear weight for a
torchao quantized tensor (``quantize_``): ``int8`` (int8 weights, activations quantized per
token at run time, int8 matmuls) or ``fp8`` (float8 e4m3 weights and activations, scaled
matmuls; needs compute capability 8.9 or newer). The same technique, configs and recipes as
on CPU; only the engine differs. Restoring applies the same torchao config to the fresh
model, whose state dict then brings the saved quantized weights.

Example:
    >>> TorchaoCudaEngine("int8").name
    'torchao'
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Collection, Sequence
from typing import Any

import torch
from torch import nn

from sconce_quant.engines.base import Built
from sconce_quant.engines.pt2e import quiet

logger = logging.getLogger(__name__)

DTYPES: tuple[str, ...] = ("int8", "fp8")
"""What ``quant.dynamic`` can quantize Linear layers to (fp8: torchao on CUDA only)."""


class TorchaoCudaEngine:
    """torchao ``quantize_`` with int8 or float8 dynamic activations, on CUDA.

    Args:
        dtype: ``int8`` or ``fp8``.

    Example:
        >>> TorchaoCudaEngine("fp8").description
        'torchao float8 dynamic (CUDA)'
    """

    name = "torchao"

    def __init__(self, dtype: str) -> None:
        self.dtype = dtype
        self.description = f"torchao {'float8' if dtype == 'fp8' else 'int8'} dynamic (CUDA)"

    def unavailable(self) -> str | None:
        if not torch.cuda.is_available():
            return "torchao's int8/fp8 dynamic kernels need a CUDA GPU"
        try:
            with quiet():
                from torchao.quantization import quantize_  # noqa: F401
        except ImportError as exc:
            return f"torchao is not installed ({exc}); pip install 'sconce-quant[pt2e]'"
        if self.dtype == "fp8" and torch.cuda.get_device_capability() < (8, 9):
            return "float8 matmuls need compute capability 8.9 or newer (Ada, Hopper)"
        return None

    def prepare(self, model: nn.Module, batches: Sequence[Any], settings: Any
                ) -> TorchaoPrepared:
        return TorchaoPrepared(model, self.dtype)

    def restore(self, model: nn.Module, record: dict[str, Any]) -> nn.Module:
        return torchao_dynamic(model.cuda(), record["layers"], record.get("dtype", "int8"))


class TorchaoPrepared:
    """A float CUDA model, quantized on demand with some layers kept in float."""

    def __init__(self, model: nn.Module, dtype: str) -> None:
        self.model = model
        self.dtype = dtype

    def build(self, skip: Collection[str] = ()) -> Built:
        layers = [name for name, module in self.model.named_modules()
                  if type(module) is nn.Linear and name not in set(skip)]
        module = torchao_dynamic(copy.deepcopy(self.model), layers, self.dtype)
        return Built(module, {"layers": layers, "dtype": self.dtype}, float_layers=sorted(skip))


def torchao_dynamic(model: nn.Module, layers: Sequence[str], dtype: str) -> nn.Module:
    """torchao's int8 / float8 dynamic quantization of exactly the named Linear layers (in
    place).

    Example:
        >>> torchao_dynamic(model.cuda(), ["fc"], "int8")  # doctest: +SKIP
    """
    with quiet():
        from torchao.quantization import (
            Float8DynamicActivationFloat8WeightConfig,
            Int8DynamicActivationInt8WeightConfig,
            quantize_,
        )
    config = (Float8DynamicActivationFloat8WeightConfig() if dtype == "fp8"
              else Int8DynamicActivationInt8WeightConfig())
    chosen = set(layers)
    with quiet():
        quantize_(model, config, filter_fn=lambda module, name: name in chosen)
    return model
