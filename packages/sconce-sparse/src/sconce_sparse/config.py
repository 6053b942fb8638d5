"""Configs of ``sparse.engine`` and ``sparse.storage``.

Example:
    >>> EngineConfig(formats=("csr", "numba_csr")).min_speedup
    1.1
    >>> EngineConfig(formats=("cssr",))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    sconce.errors.ConfigError: unknown sparse format 'cssr'; did you mean 'csr'? (known: ...)
"""

from __future__ import annotations

from dataclasses import dataclass

from sconce.config import Config, check_choice, check_positive, check_range
from sconce.errors import ConfigError
from sconce_sparse.encoding import ENCODINGS
from sconce_sparse.formats import check_formats

__all__ = ["EngineConfig", "StorageConfig"]


def _check_names(name: str, values: tuple[str, ...]) -> None:
    if isinstance(values, str) or not all(isinstance(v, str) and v for v in values):
        raise ConfigError(f"{name} must be a list of names, got {values!r}")


@dataclass
class StorageConfig(Config):
    """``sparse.storage``: sparse layers saved compressed; they run dense.

    Attributes:
        min_sparsity: layers whose weight has fewer zeros are left as they are.
        encoding: ``auto`` (the smaller of ``bitmask`` and ``relative`` per layer), or one of
            them for every layer.
        skip_layers: module names (or globs) left as they are.
        embeddings: store sparse embedding tables too.

    Example:
        >>> StorageConfig(min_sparsity=1.0)
        Traceback (most recent call last):
        ...
        sconce.errors.ConfigError: min_sparsity must be in [0.0, 1.0), got 1.0
    """

    min_sparsity: float = 0.3
    encoding: str = "auto"
    skip_layers: tuple[str, ...] = ()
    embeddings: bool = True

    def validate(self) -> None:
        super().validate()
        check_range("min_sparsity", self.min_sparsity, 0.0, 1.0, high_inclusive=False)
        check_choice("encoding", self.encoding, ENCODINGS)
        _check_names("skip_layers", self.skip_layers)


@dataclass
class EngineConfig(StorageConfig):
    """``sparse.engine``: each sparse Linear / Conv runs in the format measured fastest.

    Attributes:
        formats: the sparse formats to try (empty: every one available); ``dense`` is always
            measured, as the baseline.
        min_speedup: a sparse format replaces dense at a batch size only if it measured at
            least this much faster there (a clear win, not noise).
        batch_sizes: the model batch sizes to measure each layer at (empty: 1 and the run's
            throughput batch).
        rounds: interleaved timing rounds per layer and batch size.
        round_seconds: time per format in each round.
        check_tolerance: relative error allowed between a sparse format's output and the
            dense layer's (a format above it is not used).

    Example:
        >>> EngineConfig(min_speedup=0.9)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        sconce.errors.ConfigError: min_speedup must be >= 1 (...), got 0.9
    """

    formats: tuple[str, ...] = ()
    min_speedup: float = 1.1
    batch_sizes: tuple[int, ...] = ()
    rounds: int = 5
    round_seconds: float = 0.02
    check_tolerance: float = 1e-4

    def validate(self) -> None:
        super().validate()
        _check_names("formats", self.formats)
        check_formats(self.formats)
        check_positive("min_speedup", self.min_speedup)
        if self.min_speedup < 1.0:
            raise ConfigError(f"min_speedup must be >= 1 (a sparse format must not be slower "
                              f"than dense), got {self.min_speedup!r}")
        if isinstance(self.batch_sizes, str) or not all(
                isinstance(b, int) and not isinstance(b, bool) and b > 0
                for b in self.batch_sizes):
            raise ConfigError(f"batch_sizes must be positive integers, got {self.batch_sizes!r}")
        if isinstance(self.rounds, bool) or not isinstance(self.rounds, int) or self.rounds < 1:
            raise ConfigError(f"rounds must be a positive integer, got {self.rounds!r}")
        check_positive("round_seconds", self.round_seconds)
        check_positive("check_tolerance", self.check_tolerance)
