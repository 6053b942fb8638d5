"""The ``quant`` plugin: registers the quantization techniques and the true-size hook."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from sconce import Footprint, hookimpl
from sconce_quant.dynamic import DynamicInt8
from sconce_quant.footprint import quantized_footprint
from sconce_quant.qat import QuantizationAwareTraining
from sconce_quant.static import StaticInt8
from sconce_quant.weight_only import WeightOnly


@hookimpl
def sconce_register_techniques(register: Callable[[Any], None]) -> None:
    """Register every technique this package offers.

    Example:
        >>> names = []
        >>> sconce_register_techniques(lambda technique: names.append(technique.name))
        >>> names
        ['quant.int8', 'quant.dynamic', 'quant.qat', 'quant.weight_only']
    """
    register(StaticInt8())
    register(DynamicInt8())
    register(QuantizationAwareTraining())
    register(WeightOnly())


@hookimpl
def sconce_module_footprint(module: nn.Module) -> Footprint | None:
    """True storage of quantized modules (packed int8, ONNX Runtime models, int4 codes).

    Example:
        >>> sconce_module_footprint(nn.ReLU()) is None
        True
    """
    return quantized_footprint(module)
