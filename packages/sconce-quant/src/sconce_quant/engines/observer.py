"""sconce's activation calibration as an observer of torch's quantization flows.

torch.ao's FX flow and torchao's PT2E flow both place observers on the activations they
quantize and ask each for its scale and zero point at conversion. Both observer base classes
share one interface (``UniformQuantizationObserverBase``), so one factory wraps
:class:`~sconce_quant.calibration.RangeEstimator` for either: every engine calibrates with
the same histogram and range choice (min-max, percentile or MSE).

Example:
    >>> from torch.ao.quantization.observer import UniformQuantizationObserverBase
    >>> observer = estimator_observer(UniformQuantizationObserverBase)(method="minmax")
    >>> _ = observer(torch.tensor([0.0, 2.55]))
    >>> scale, zero_point = observer.calculate_qparams()
    >>> round(float(scale), 4), int(zero_point)
    (0.01, 0)
"""

from __future__ import annotations

import logging
from functools import cache
from typing import Any

import torch

from sconce_quant.calibration import RangeEstimator

logger = logging.getLogger(__name__)


@cache
def estimator_observer(base: type) -> type:
    """An activation observer class on ``base`` that calibrates with :class:`RangeEstimator`.

    The observer takes ``method`` and ``percentile`` besides the base's arguments. Its
    ``preset`` attribute, when set to ``(scale, zero_point)``, replaces calibration: a saved
    model is rebuilt with exactly the qparams it was converted with.

    Example:
        >>> from torch.ao.quantization.observer import UniformQuantizationObserverBase
        >>> cls = estimator_observer(UniformQuantizationObserverBase)
        >>> cls is estimator_observer(UniformQuantizationObserverBase)
        True
    """

    class SconceObserver(base):  # type: ignore[misc]  # base is a runtime class argument
        """Activation observer: sconce's histogram, and min-max / percentile / MSE ranges."""

        def __init__(self, method: str = "mse", percentile: float = 99.99,
                     dtype: torch.dtype = torch.quint8,
                     qscheme: torch.qscheme = torch.per_tensor_affine,
                     reduce_range: bool = False, quant_min: int | None = None,
                     quant_max: int | None = None, factory_kwargs: Any = None,
                     eps: float = torch.finfo(torch.float32).eps, **kwargs: Any) -> None:
            super().__init__(dtype=dtype, qscheme=qscheme, reduce_range=reduce_range,
                             quant_min=quant_min, quant_max=quant_max,
                             factory_kwargs=factory_kwargs, eps=eps, **kwargs)
            self.method = method
            self.percentile = percentile
            self.estimator = RangeEstimator()
            self.preset: tuple[float, int] | None = None
            self.register_buffer("min_val", torch.tensor(float("inf")))
            self.register_buffer("max_val", torch.tensor(float("-inf")))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.numel() and self.preset is None:
                self.estimator.update(x)
            return x

        def calculate_qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
            if self.preset is not None:
                scale, zero_point = self.preset
                return (torch.tensor([scale], dtype=torch.float32),
                        torch.tensor([zero_point], dtype=torch.int32))
            if self.estimator.empty:  # restoring a saved model: the state dict sets the qparams
                low, high = 0.0, 1.0
            else:
                levels = int(self.quant_max) - int(self.quant_min) + 1
                low, high = self.estimator.range(self.method, levels=levels,
                                                 percentile=self.percentile)
            self.min_val = torch.tensor(low)
            self.max_val = torch.tensor(high)
            return self._calculate_qparams(self.min_val.reshape(1), self.max_val.reshape(1))

        def extra_repr(self) -> str:
            return f"method={self.method}"

    SconceObserver.__qualname__ = f"SconceObserver[{base.__module__}]"
    return SconceObserver
