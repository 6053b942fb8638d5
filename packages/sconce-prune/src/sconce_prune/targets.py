"""Which weights the pruning techniques prune, and which layers they skip.

Covered: ``Linear``, ``Conv1d/2d/3d``, ``ConvTranspose1d/2d/3d``, ``Embedding``, and both
projections of ``nn.MultiheadAttention`` (its ``in_proj_weight``, or ``q/k/v_proj_weight``
when the key/value sizes differ, and its ``out_proj`` Linear). A target is named after its
module (``features.3.0``); an attention input projection after its parameter
(``blocks.0.attn.in_proj_weight``). Tied weights are counted once.

By default the first and the last prunable layers (in registration order: usually the stem
and the classifier) are skipped; they are small and fragile.

Example:
    >>> from torch import nn
    >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.Linear(8, 2))
    >>> [t.name for t in find_targets(model)]
    ['0', '2', '3']
    >>> kept, skipped = select_targets(find_targets(model), None)
    >>> [t.name for t in kept], [t.name for t in skipped]
    (['2'], ['0', '3'])
"""

from __future__ import annotations

import difflib
import fnmatch
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from sconce.errors import ConfigError

logger = logging.getLogger(__name__)

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_TRANSPOSED = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
PRUNABLE_MODULES: tuple[type[nn.Module], ...] = (nn.Linear, *_CONVS, *_TRANSPOSED, nn.Embedding)
"""Module types whose ``weight`` is pruned (attention projections are handled apart)."""

__all__ = [
    "PRUNABLE_MODULES", "Target", "find_targets", "select_targets", "weight_count", "zero_count",
]


@dataclass(frozen=True, eq=False)
class Target:
    """One prunable weight.

    Attributes:
        name: how configs and reports call it.
        module: the module that owns the parameter.
        param_name: the parameter's attribute name on ``module``.
        input_dim: the dimension that runs along the layer's inputs (N:M groups run along it).
    """

    name: str
    module: nn.Module
    param_name: str
    input_dim: int

    @property
    def weight(self) -> nn.Parameter:
        """The parameter itself (looked up each time, so module swaps are seen)."""
        return getattr(self.module, self.param_name)

    @property
    def numel(self) -> int:
        """Number of weight values."""
        return self.weight.numel()

    def __repr__(self) -> str:
        return f"Target({self.name!r}, {type(self.module).__name__}, {tuple(self.weight.shape)})"


def find_targets(model: nn.Module) -> list[Target]:
    """Every prunable weight of ``model``, in module registration order.

    Example:
        >>> attn = nn.MultiheadAttention(8, 2)
        >>> [t.name for t in find_targets(attn)]
        ['in_proj_weight', 'out_proj']
    """
    targets: list[Target] = []
    seen: set[int] = set()

    def add(name: str, module: nn.Module, param_name: str, input_dim: int) -> None:
        param = getattr(module, param_name, None)
        if not isinstance(param, nn.Parameter) or id(param) in seen:
            return
        seen.add(id(param))
        targets.append(Target(name, module, param_name, input_dim))

    for name, module in model.named_modules():
        if isinstance(module, nn.MultiheadAttention):
            prefix = f"{name}." if name else ""
            for param_name in ("in_proj_weight", "q_proj_weight", "k_proj_weight",
                               "v_proj_weight"):
                add(prefix + param_name, module, param_name, 1)
        elif isinstance(module, _TRANSPOSED):
            add(name, module, "weight", 0)
        elif isinstance(module, PRUNABLE_MODULES):
            add(name, module, "weight", 1)
    return targets


def select_targets(targets: Sequence[Target], skip: Sequence[str] | None
                   ) -> tuple[list[Target], list[Target]]:
    """Split ``targets`` into (pruned, skipped).

    Args:
        targets: from :func:`find_targets`.
        skip: ``None`` skips the first and the last target. Otherwise each entry is a target
            name, a module name (skipping every target inside it), or a glob (``"head*"``);
            ``()`` skips nothing.

    Raises:
        ConfigError: when an entry matches nothing (the message lists close names), or
            nothing is left to prune.

    Example:
        >>> model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
        >>> select_targets(find_targets(model), ["2"])  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        sconce.errors.ConfigError: skip_layers: no prunable layer is called '2'; ...: 0, 1
    """
    if not targets:
        raise ConfigError("the model has no prunable layer (Linear, Conv, ConvTranspose, "
                          "Embedding or MultiheadAttention)")
    if skip is None:
        skipped_names = {targets[0].name, targets[-1].name} if len(targets) > 2 else set()
        if len(targets) <= 2:
            logger.info("only %d prunable layer(s): none skipped", len(targets))
    else:
        skipped_names = set()
        for entry in skip:
            matched = [t.name for t in targets if _matches(t.name, entry)]
            if not matched:
                raise ConfigError(_unknown_layer_message(entry, [t.name for t in targets]))
            skipped_names.update(matched)
    kept = [t for t in targets if t.name not in skipped_names]
    skipped = [t for t in targets if t.name in skipped_names]
    if not kept:
        raise ConfigError("skip_layers leaves no layer to prune; skip fewer layers")
    return kept, skipped


def weight_count(targets: Sequence[Target]) -> int:
    """Total weight values of ``targets``.

    Example:
        >>> weight_count(find_targets(nn.Linear(3, 2)))
        6
    """
    return sum(t.numel for t in targets)


def zero_count(targets: Sequence[Target]) -> int:
    """Weight values of ``targets`` that are exactly zero.

    Example:
        >>> zero_count(find_targets(nn.Linear(3, 2)))
        0
    """
    with torch.no_grad():
        return sum(int((t.weight == 0).sum()) for t in targets)


def _matches(name: str, entry: str) -> bool:
    if any(ch in entry for ch in "*?["):
        return fnmatch.fnmatchcase(name, entry)
    return name == entry or name.startswith(entry + ".")


def _unknown_layer_message(entry: str, names: list[str]) -> str:
    close = difflib.get_close_matches(entry, names, n=3, cutoff=0.5)
    if close:
        hint = "did you mean " + " or ".join(repr(c) for c in close) + "?"
    else:
        shown = names if len(names) <= 12 else [*names[:12], "..."]
        hint = "prunable layers: " + ", ".join(shown)
    return f"skip_layers: no prunable layer is called {entry!r}; {hint}"
