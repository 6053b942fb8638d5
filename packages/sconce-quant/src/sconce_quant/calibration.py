"""Activation calibration: a histogram of what a tensor takes, and its clipping range by
min-max, percentile or minimum quantization error (MSE).

One :class:`RangeEstimator` per activation tensor is fed every calibration batch; at the end
:meth:`RangeEstimator.range` picks the range the engine quantizes to. The same estimator
drives every engine (a torch.ao observer wraps it; the ONNX Runtime engine feeds it the
graph's intermediate tensors), so the engines quantize the same way.

- ``minmax``: the observed minimum and maximum; no clipping, coarsest steps.
- ``percentile``: the ``percentile``-th value of ``|x|`` on each side; clips rare outliers.
- ``mse`` (default): the range whose expected squared error (rounding inside, clipping
  outside) over the observed histogram is smallest.

Example:
    >>> import torch
    >>> estimator = RangeEstimator()
    >>> estimator.update(torch.cat([torch.rand(10_000), torch.tensor([50.0])]))
    >>> estimator.range("minmax")
    (0.0, 50.0)
    >>> low, high = estimator.range("percentile", percentile=99.9)
    >>> round(high, 2)
    1.0
"""

from __future__ import annotations

import logging
import math

import torch

logger = logging.getLogger(__name__)

CALIBRATION_METHODS: tuple[str, ...] = ("minmax", "percentile", "mse")


class RangeEstimator:
    """Histogram of the values one tensor takes over the calibration batches.

    The histogram spans ``[lo, hi]`` (always including 0) with ``bins`` bins; when a batch
    falls outside, the span grows (doubling, so old counts move to coarser bins without
    being split) and the old counts are merged into the new bins.

    Args:
        bins: histogram resolution.

    Example:
        >>> estimator = RangeEstimator(bins=256)
        >>> estimator.update(torch.tensor([-1.0, 0.0, 3.0]))
        >>> estimator.range("minmax"), estimator.count
        ((-1.0, 3.0), 3)
    """

    def __init__(self, bins: int = 2048) -> None:
        self.bins = bins
        self.hist: torch.Tensor | None = None
        self.lo = 0.0
        self.hi = 0.0
        self.min = math.inf
        self.max = -math.inf
        self.count = 0
        self.zeros = 0

    @property
    def empty(self) -> bool:
        """True until a non-empty batch was seen."""
        return self.count == 0

    def update(self, x: torch.Tensor) -> None:
        """Add the values of ``x`` (any shape) to the histogram."""
        values = x.detach().reshape(-1).to(torch.float32)
        values = values[torch.isfinite(values)]
        if values.numel() == 0:
            return
        low, high = (float(v) for v in torch.aminmax(values))
        self.min, self.max = min(self.min, low), max(self.max, high)
        self.count += values.numel()
        self.zeros += int((values == 0).sum())
        self._cover(min(low, 0.0), max(high, 0.0))
        assert self.hist is not None
        self.hist += torch.histc(values.cpu(), self.bins, self.lo, self.hi).to(torch.float64)

    def _cover(self, low: float, high: float) -> None:
        if self.hist is None:
            self.lo, self.hi = low, low + max(high - low, 1e-8)
            self.hist = torch.zeros(self.bins, dtype=torch.float64)
            return
        if low >= self.lo and high <= self.hi:
            return
        new_lo, new_hi = self.lo, self.hi
        while low < new_lo or high > new_hi:  # grow by doubling the span on the needed side
            span = new_hi - new_lo
            if low < new_lo:
                new_lo -= span
            else:
                new_hi += span
        old_width = (self.hi - self.lo) / self.bins
        centers = self.lo + (torch.arange(self.bins, dtype=torch.float64) + 0.5) * old_width
        index = ((centers - new_lo) / (new_hi - new_lo) * self.bins).long().clamp(0, self.bins - 1)
        merged = torch.zeros(self.bins, dtype=torch.float64)
        merged.index_add_(0, index, self.hist)
        self.hist, self.lo, self.hi = merged, new_lo, new_hi

    def range(self, method: str = "mse", *, levels: int = 256, percentile: float = 99.99
              ) -> tuple[float, float]:
        """The clipping range ``(low, high)`` (containing 0) chosen by ``method``.

        Args:
            method: ``minmax``, ``percentile`` or ``mse``.
            levels: integer levels of the target type (256 for 8 bits, 128 with reduce_range).
            percentile: for ``percentile``: the share of values kept inside, in percent.

        Raises:
            ValueError: unknown method, or nothing was observed.
        """
        if self.empty or self.hist is None:
            raise ValueError("no values were observed; run calibration batches first")
        low, high = min(self.min, 0.0), max(self.max, 0.0)
        if method == "minmax":
            return low, high
        if method == "percentile":
            return self._percentile_range(percentile, low, high)
        if method == "mse":
            return self._mse_range(levels, low, high)
        raise ValueError(f"unknown calibration method {method!r}; use one of "
                         f"{', '.join(CALIBRATION_METHODS)}")

    def _edges(self) -> torch.Tensor:
        return torch.linspace(self.lo, self.hi, self.bins + 1, dtype=torch.float64)

    def _percentile_range(self, percentile: float, low: float, high: float
                          ) -> tuple[float, float]:
        assert self.hist is not None
        tail = (100.0 - percentile) / 100.0
        total = float(self.hist.sum())
        cdf = torch.cumsum(self.hist, 0) / total
        edges = self._edges()

        def quantile(q: float) -> float:
            index = int(torch.searchsorted(cdf, torch.tensor(q, dtype=torch.float64)))
            index = min(index, self.bins - 1)
            before = float(cdf[index - 1]) if index > 0 else 0.0
            mass = float(self.hist[index]) / total  # type: ignore[index]
            frac = 0.0 if mass <= 0 else (q - before) / mass
            return float(edges[index] + frac * (edges[index + 1] - edges[index]))

        lo = min(0.0, quantile(tail)) if low < 0 else 0.0
        hi = max(0.0, quantile(1.0 - tail)) if high > 0 else 0.0
        return max(lo, low), min(hi, high)

    def _mse_range(self, levels: int, low: float, high: float) -> tuple[float, float]:
        """Grid search of shrink factors for each side minimizing the expected error."""
        assert self.hist is not None
        edges = self._edges()
        centers = (edges[:-1] + edges[1:]) / 2
        counts = self.hist
        both_sides = low < 0 < high
        steps = torch.linspace(0.02, 1.0, 30 if both_sides else 100, dtype=torch.float64)
        his = steps * high if high > 0 else torch.zeros(1, dtype=torch.float64)
        los = steps * low if low < 0 else torch.zeros(1, dtype=torch.float64)
        grid_lo, grid_hi = torch.meshgrid(los, his, indexing="ij")
        grid_lo, grid_hi = grid_lo.reshape(-1, 1), grid_hi.reshape(-1, 1)
        step = (grid_hi - grid_lo).clamp_min(1e-12) / (levels - 1)
        clipped = torch.minimum(torch.maximum(centers, grid_lo), grid_hi)
        inside = (centers >= grid_lo) & (centers <= grid_hi)
        error = torch.where(inside, step**2 / 12.0, (centers - clipped) ** 2)
        total = (error * counts).sum(dim=1)
        # exact zeros (a ReLU's output) are represented exactly: take back their rounding error
        zero_bin = min(int((0.0 - self.lo) / (self.hi - self.lo) * self.bins), self.bins - 1)
        total -= self.zeros * error[:, zero_bin]
        best = int(torch.argmin(total))
        return float(grid_lo[best, 0]), float(grid_hi[best, 0])
