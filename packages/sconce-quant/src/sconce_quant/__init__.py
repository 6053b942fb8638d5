"""sconce-quant: int8 on real int8 engines, dynamic int8, QAT and weight-only int8/int4.

The techniques register themselves with sconce through the ``quant`` entry point; use them by
name (``quant.int8``, ``quant.dynamic``, ``quant.qat``, ``quant.weight_only``) in a recipe.

Example:
    >>> import sconce_quant
    >>> sconce_quant.StaticInt8.name, sconce_quant.Int8Config().engine
    ('quant.int8', 'auto')
"""

from __future__ import annotations

from sconce_quant.calibration import CALIBRATION_METHODS, RangeEstimator
from sconce_quant.dynamic import DynamicConfig, DynamicInt8
from sconce_quant.engines import ENGINES, OrtModule, StaticSettings, get_engine
from sconce_quant.export import export_onnx
from sconce_quant.gptq import GPTQSettings, gptq_quantize
from sconce_quant.modules import WeightOnlyLinear
from sconce_quant.qat import QATConfig, QuantizationAwareTraining
from sconce_quant.static import Int8Config, StaticInt8
from sconce_quant.weight_only import WeightOnly, WeightOnlyConfig

__version__ = "0.1.0"

__all__ = [
    "CALIBRATION_METHODS", "ENGINES", "DynamicConfig", "DynamicInt8", "GPTQSettings",
    "Int8Config", "OrtModule", "QATConfig", "QuantizationAwareTraining", "RangeEstimator",
    "StaticInt8", "StaticSettings", "WeightOnly", "WeightOnlyConfig", "WeightOnlyLinear",
    "__version__", "export_onnx", "get_engine", "gptq_quantize",
]
