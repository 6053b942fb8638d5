"""Configs of the one-shot pruners: ``prune.sparsegpt``, ``prune.obc`` and ``prune.wanda``.

Example:
    >>> SparseGPTConfig(n=2, m=4).sparsity
    0.5
    >>> SparseGPTConfig(n=4, m=4)
    Traceback (most recent call last):
    ...
    sconce.errors.ConfigError: n must be smaller than m (N:M keeps n of every m weights), got 4:4
    >>> WandaConfig(sparsity=1.0)
    Traceback (most recent call last):
    ...
    sconce.errors.ConfigError: sparsity must be in [0.0, 1.0), got 1.0
"""

from __future__ import annotations

from dataclasses import dataclass

from sconce.config import PruneConfig, check_choice, check_positive, check_range
from sconce.errors import ConfigError
from sconce.lowbit import LOWBIT_BITS

__all__ = ["OBCConfig", "OneShotConfig", "SparseGPTConfig", "WandaConfig"]


def _check_count(name: str, value: int, *, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _check_names(name: str, value: tuple[str, ...] | None) -> None:
    if value is None:
        return
    if isinstance(value, str) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{name} must be a list of layer names or globs, got {value!r}")


@dataclass
class OneShotConfig(PruneConfig):
    """Fields the one-shot pruners share.

    Attributes:
        sparsity: fraction of each pruned layer's weights set to zero, in [0, 1); with N:M
            it follows from ``n`` and ``m`` (leave it out).
        n, m: N:M semi-structured sparsity, ``n`` of every ``m`` consecutive inputs kept
            (``m`` 0: unstructured). Layers whose input count is not a multiple of ``m`` are
            left dense and listed in the report.
        layers: the layers to prune (names or globs). None: the Linear layers inside the
            model's repeated blocks (a transformer's layers: not its embeddings, not its
            LM head); for models without such blocks, every Linear and ungrouped Conv2d but
            the first and the last.
        skip_layers: names or globs of layers to leave dense.
        calibration_samples: calibration samples (sequences, sentences, images) to measure.
        sequential: measure each layer (or group of layers sharing an input) of a block
            after the ones before it were pruned; False measures a block's layers in one
            pass, which is faster (SparseGPT's reference does so).
    """

    sparsity: float | None = None  # type: ignore[assignment]
    n: int = 0
    m: int = 0
    layers: tuple[str, ...] | None = None
    skip_layers: tuple[str, ...] = ()
    calibration_samples: int = 128
    sequential: bool = False

    def __post_init__(self) -> None:
        _check_count("n", self.n, minimum=0)
        _check_count("m", self.m, minimum=0)
        if self.m or self.n:
            if not self.m or not self.n:
                raise ConfigError(f"N:M needs both n and m (e.g. n=2, m=4), got "
                                  f"{self.n}:{self.m}")
            if self.n >= self.m:
                raise ConfigError(f"n must be smaller than m (N:M keeps n of every m weights), "
                                  f"got {self.n}:{self.m}")
            implied = 1.0 - self.n / self.m
            if self.sparsity is not None and abs(float(self.sparsity) - implied) > 1e-9:
                raise ConfigError(f"sparsity {self.sparsity} does not match {self.n}:{self.m} "
                                  f"(which prunes {implied:g}); leave sparsity out")
            self.sparsity = implied
        elif self.sparsity is None:
            self.sparsity = 0.5
        super().__post_init__()

    def validate(self) -> None:
        super().validate()
        _check_names("layers", self.layers)
        _check_names("skip_layers", self.skip_layers)
        _check_count("calibration_samples", self.calibration_samples)

    @property
    def pattern(self) -> str:
        """``"2:4"`` or ``"unstructured"``."""
        return f"{self.n}:{self.m}" if self.m else "unstructured"


@dataclass
class WandaConfig(OneShotConfig):
    """``prune.wanda``: ``|W| * ||X||`` per output row, no weight update (see
    :class:`OneShotConfig`)."""


@dataclass
class SparseGPTConfig(OneShotConfig):
    """``prune.sparsegpt``: OBS reconstruction through the inverse Hessian's Cholesky factor.

    Attributes:
        damp: Hessian dampening, as a fraction of its mean diagonal.
        block_size: columns per lazy-update block.
        bits: None, or 4 / 8 to quantize the kept weights jointly with pruning; Linear
            layers then store packed group-wise codes (true size).
        group_size: inputs per quantization scale / zero point.
        symmetric: symmetric quantization grids (else each group's min/max).
        clip_search: each group's grid range chosen by the least rounding error of its
            weights (it may clip outliers), as sconce-quant's GPTQ does; else min/max.
    """

    damp: float = 0.01
    block_size: int = 128
    bits: int | None = None
    group_size: int = 128
    symmetric: bool = False
    clip_search: bool = True

    def validate(self) -> None:
        super().validate()
        check_range("damp", self.damp, 0.0, 1.0, low_inclusive=False)
        _check_count("block_size", self.block_size)
        if self.bits is not None:
            check_choice("bits", self.bits, LOWBIT_BITS)
        _check_count("group_size", self.group_size)


@dataclass
class OBCConfig(OneShotConfig):
    """``prune.obc``: exact row-wise OBS, ``O(columns^3)`` per row, for small layers.

    Attributes:
        damp: Hessian dampening, as a fraction of its mean diagonal.
        max_columns: the widest layer input (features, or ``C*kh*kw`` for a convolution)
            solved exactly; a wider target is an error that points to ``prune.sparsegpt``.
    """

    damp: float = 0.01
    max_columns: int = 1024

    def validate(self) -> None:
        super().validate()
        check_range("damp", self.damp, 0.0, 1.0, low_inclusive=False)
        check_positive("max_columns", self.max_columns)
