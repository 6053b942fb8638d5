"""Configs of the magnitude-pruning techniques (``prune.magnitude``, ``prune.gmp``, ``prune.nm``).

Example:
    >>> GMPConfig(sparsity=0.8).allocation
    'auto'
    >>> NMConfig(n=2, m=4).sparsity
    0.5
    >>> NMConfig(n=5, m=4)
    Traceback (most recent call last):
    ...
    sconce.errors.ConfigError: n must be smaller than m (N:M keeps n of every m weights), got 5:4
"""

from __future__ import annotations

from dataclasses import dataclass

from sconce.config import Config, PruneConfig, check_choice, check_positive, check_range
from sconce.errors import ConfigError
from sconce.sensitivity import DEFAULT_RATIOS, check_ratios

ALLOCATIONS: tuple[str, ...] = ("auto", "uniform", "global")
"""How sparsity is shared among layers: ``auto`` (sensitivity analysis, then ranking within
each layer), ``uniform`` (the same ratio in every layer, ranking within each layer) or
``global`` (one magnitude ranking across all layers)."""

__all__ = ["ALLOCATIONS", "GMPConfig", "MagnitudeConfig", "NMConfig"]


def _check_skip(skip: tuple[str, ...] | None) -> None:
    if skip is None:
        return
    if isinstance(skip, str) or not all(isinstance(s, str) and s for s in skip):
        raise ConfigError(f"skip_layers must be a list of layer names, got {skip!r}")


def _check_block(block: tuple[int, int] | None) -> None:
    if block is None:
        return
    if isinstance(block, (str, bytes)) or not isinstance(block, tuple | list) or len(block) != 2 \
            or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in block):
        raise ConfigError(f"block must be two positive integers [rows, cols], like [1, 8] or "
                          f"[4, 4]; got {block!r}")


def _check_optional_epochs(name: str, value: float | None) -> None:
    if value is not None:
        check_positive(name, value, allow_zero=True)


@dataclass
class MagnitudeConfig(PruneConfig):
    """One-shot magnitude pruning.

    Attributes:
        sparsity: fraction of the pruned layers' weights set to zero, in [0, 1).
        allocation: ``uniform`` (default), ``global`` or ``auto``; see :data:`ALLOCATIONS`.
        skip_layers: layer names (or module names, or globs) left dense; None skips the
            first and the last prunable layer; ``[]`` prunes every layer.
        max_accuracy_drop: with ``allocation="auto"``: instead of ``sparsity``, find the
            highest sparsity (up to ``max_sparsity``) whose pruned model, before any
            fine-tuning, loses at most this many accuracy points on validation. Unset, the
            run's ``max_accuracy_drop`` constraint applies (what earlier stages lost against
            the original taken off, :meth:`sconce.Context.accuracy_budget`); ``uniform`` or
            ``global`` allocation keeps ``sparsity`` under a run's budget.
        max_sparsity: upper end of that search.
        sensitivity_ratios: per-layer ratios probed by the sensitivity analysis.
        sensitivity_samples: validation samples each probe evaluates.
        block: prune whole ``[rows, cols]`` tiles (e.g. ``[1, 8]``, ``[4, 4]``) of each
            weight's 2-D view ``(out, in * kh * kw)`` instead of single values, the layout
            block-sparse kernels run; the tiles with the smallest L1 norm go. Layers the
            block does not divide are left unpruned and listed in the report. None: single
            values.
    """

    allocation: str = "uniform"
    skip_layers: tuple[str, ...] | None = None
    max_accuracy_drop: float | None = None
    max_sparsity: float = 0.95
    sensitivity_ratios: tuple[float, ...] = DEFAULT_RATIOS
    sensitivity_samples: int = 1000
    block: tuple[int, int] | None = None

    def validate(self) -> None:
        super().validate()
        check_choice("allocation", self.allocation, ALLOCATIONS)
        _check_skip(self.skip_layers)
        _check_block(self.block)
        if self.max_accuracy_drop is not None:
            check_positive("max_accuracy_drop", self.max_accuracy_drop, allow_zero=True)
            if self.allocation != "auto":
                raise ConfigError("max_accuracy_drop needs allocation='auto' (the sensitivity "
                                  f"analysis finds the sparsity); got allocation="
                                  f"{self.allocation!r}")
        check_range("max_sparsity", self.max_sparsity, 0.0, 1.0, low_inclusive=False,
                    high_inclusive=False)
        check_ratios(self.sensitivity_ratios)
        if isinstance(self.sensitivity_samples, bool) or not isinstance(
                self.sensitivity_samples, int) or self.sensitivity_samples < 1:
            raise ConfigError(
                f"sensitivity_samples must be a positive integer, got {self.sensitivity_samples!r}")


@dataclass
class GMPConfig(MagnitudeConfig):
    """Gradual magnitude pruning during fine-tuning (Zhu & Gupta's cubic schedule).

    Attributes:
        allocation: ``auto`` by default: per-layer ratios from a sensitivity analysis,
            checked with all layers pruned together on validation.
        initial_sparsity: sparsity of the first pruning step, in [0, sparsity].
        prune_start: fraction of fine-tuning at which pruning starts.
        prune_end: fraction at which the final sparsity is reached; the rest recovers.
        pruning_steps: how many times the masks are recomputed on the way.
        finetune_epochs: fine-tuning budget; None uses the run's (``finetune_epochs``).
        lr: fine-tuning learning rate; None uses the run's.
    """

    allocation: str = "auto"
    initial_sparsity: float = 0.0
    prune_start: float = 0.0
    prune_end: float = 0.6
    pruning_steps: int = 10
    finetune_epochs: float | None = None
    lr: float | None = None

    def validate(self) -> None:
        super().validate()
        check_range("initial_sparsity", self.initial_sparsity, 0.0, 1.0, high_inclusive=False)
        if self.max_accuracy_drop is None and self.initial_sparsity > self.sparsity:
            raise ConfigError(f"initial_sparsity ({self.initial_sparsity}) must not exceed "
                              f"sparsity ({self.sparsity})")
        check_range("prune_start", self.prune_start, 0.0, 1.0, high_inclusive=False)
        check_range("prune_end", self.prune_end, 0.0, 1.0, low_inclusive=False)
        if self.prune_end <= self.prune_start:
            raise ConfigError(f"prune_end ({self.prune_end}) must be after prune_start "
                              f"({self.prune_start})")
        if isinstance(self.pruning_steps, bool) or not isinstance(self.pruning_steps, int) \
                or self.pruning_steps < 1:
            raise ConfigError(f"pruning_steps must be a positive integer, got "
                              f"{self.pruning_steps!r}")
        _check_optional_epochs("finetune_epochs", self.finetune_epochs)
        if self.lr is not None:
            check_positive("lr", self.lr)


@dataclass
class NMConfig(Config):
    """N:M semi-structured sparsity: ``n`` of every ``m`` consecutive input weights kept.

    Like every ``prune.*`` config it has ``sparsity``, but optional: ``n`` and ``m`` set it.

    Attributes:
        sparsity: set by ``n`` and ``m`` (``1 - n/m``); leave it out, or give that value.
        n: weights kept per group.
        m: group size, along the input dimension (input channels for convolutions).
        skip_layers: as for :class:`MagnitudeConfig`; layers whose input dimension is not a
            multiple of ``m`` are skipped too (and listed in the report).
        finetune_epochs: fine-tuning budget with the masks held; None uses the run's.
        lr: fine-tuning learning rate; None uses the run's.
    """

    sparsity: float | None = None
    n: int = 2
    m: int = 4
    skip_layers: tuple[str, ...] | None = None
    finetune_epochs: float | None = None
    lr: float | None = None

    def __post_init__(self) -> None:
        for name in ("n", "m"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if self.n >= self.m:
            raise ConfigError(f"n must be smaller than m (N:M keeps n of every m weights), "
                              f"got {self.n}:{self.m}")
        if self.sparsity is None:
            self.sparsity = 1.0 - self.n / self.m
        super().__post_init__()

    def validate(self) -> None:
        super().validate()
        expected = 1.0 - self.n / self.m
        check_range("sparsity", float(self.sparsity or 0.0), 0.0, 1.0, high_inclusive=False)
        if abs(float(self.sparsity or 0.0) - expected) > 1e-9:
            raise ConfigError(f"sparsity {self.sparsity} does not match {self.n}:{self.m} "
                              f"(which prunes {expected:g}); leave sparsity out")
        _check_skip(self.skip_layers)
        _check_optional_epochs("finetune_epochs", self.finetune_epochs)
        if self.lr is not None:
            check_positive("lr", self.lr)
