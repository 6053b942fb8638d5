"""``sparse.storage``: ship a pruned model small; it still runs dense.

Every layer whose weight is at least ``min_sparsity`` zeros (Linear, Conv1d/2d, Embedding,
and torch.ao int8 layers left by ``quant.int8`` / ``quant.dynamic``) is replaced by its
sparse-storage form: ``state_dict()`` — and so ``model.pt`` — holds the compressed weight
(bitmask or relative indices plus values; int8 values for int8 layers), and the size metric
counts exactly those bytes. At run time a layer decodes its weight once and runs the dense
kernels, so speed is unchanged; ``sparse.engine`` also chooses faster formats.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from sconce.context import Context
    >>> model = nn.Sequential(nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 4))
    >>> with torch.no_grad():
    ...     _ = model[0].weight.mul_(torch.rand(256, 256) > 0.9)
    >>> ctx = Context.for_inputs(torch.randn(1, 256))
    >>> stored = SparseStorage().apply(model, StorageConfig(), ctx)
    >>> type(stored[0]).__name__, type(stored[2]).__name__
    ('SparseLinear', 'Linear')
    >>> ctx.stage.notes["stored sparse"]  # doctest: +ELLIPSIS
    '1 layer(s): 256.0 KiB -> 3... KiB of weights (...)'
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from torch import nn

from sconce.technique import Technique
from sconce_sparse.config import StorageConfig
from sconce_sparse.convert import (
    Found,
    find_layers,
    layer_record,
    replace_module,
    restore_layers,
    to_sparse,
)
from sconce_sparse.layers import SparseLayer
from sconce_sparse.quantized import SparseQuantized

if TYPE_CHECKING:
    from sconce.context import Context

logger = logging.getLogger(__name__)

__all__ = ["SparseStorage", "note_storage", "nothing_sparse"]

KIB = 1024


def _dense_nbytes(module: nn.Module) -> int:
    if callable(getattr(module, "weight", None)):  # an int8 layer: one byte per value
        return int(module.weight().numel())  # type: ignore[operator]
    weight: Any = module.weight
    return int(weight.numel() * weight.element_size())


def note_storage(ctx: Context, found: Found, layers: dict[str, SparseLayer | SparseQuantized]
                 ) -> None:
    """Leave the storage facts in the report: bytes before and after, encodings, left alone.

    Example:
        >>> from sconce.context import Context
        >>> import torch
        >>> ctx = Context.for_inputs(torch.zeros(1, 2))
        >>> note_storage(ctx, Found(left_dense={"fc": "sparsity 0.0% < 30%"}), {})
        >>> ctx.stage.notes["left as they are"]
        {'fc': 'sparsity 0.0% < 30%'}
    """
    if layers:
        before = sum(_dense_nbytes(c.module) for c in found.layers)
        after = sum(layer.stored_nbytes for layer in layers.values())
        encodings = sorted({layer.encoding for layer in layers.values()})
        ctx.note("stored sparse", f"{len(layers)} layer(s): {before / KIB:.1f} KiB -> "
                 f"{after / KIB:.1f} KiB of weights ({', '.join(encodings)})")
    int8 = [name for name, layer in layers.items() if isinstance(layer, SparseQuantized)]
    if int8:
        ctx.note("int8 layers", f"{len(int8)} stored sparse with int8 values; they run on "
                 "their int8 engine (no sparse int8 kernel)")
    if found.left_dense:
        ctx.note("left as they are", dict(found.left_dense))


def nothing_sparse(ctx: Context, found: Found, min_sparsity: float) -> None:
    """The note for a model without sparse layers (it passes through unchanged).

    Example:
        >>> from sconce.context import Context
        >>> import torch
        >>> ctx = Context.for_inputs(torch.zeros(1, 2))
        >>> nothing_sparse(ctx, Found(), 0.3)
        >>> ctx.stage.notes["sparse layers"]
        'none: no supported layer has at least 30% zero weights; the model is unchanged'
    """
    ctx.note("sparse layers", f"none: no supported layer has at least {min_sparsity:.0%} zero "
             "weights; the model is unchanged")
    if found.left_dense:
        ctx.note("left as they are", dict(found.left_dense))
    ctx.set_restore_record({"layers": {}})


class SparseStorage(Technique):
    """Save sparse layers compressed (bitmask or relative indices); they run dense.

    Example:
        >>> SparseStorage().name, SparseStorage().kind
        ('sparse.storage', 'convert')
    """

    name = "sparse.storage"
    kind = "convert"
    Config = StorageConfig
    finetune_after = False

    def apply(self, model: nn.Module, config: StorageConfig, ctx: Context) -> nn.Module:
        kinds = ("linear", "conv", "int8", *(("embedding",) if config.embeddings else ()))
        found = find_layers(model, min_sparsity=config.min_sparsity,
                            skip_layers=config.skip_layers, kinds=kinds)
        if not found.layers:
            nothing_sparse(ctx, found, config.min_sparsity)
            return model
        layers, records = self.convert(model, found, config, ctx)
        for name, layer in layers.items():
            model = replace_module(model, name, layer)
        ctx.set_restore_record({"layers": records})
        note_storage(ctx, found, layers)
        return model

    def convert(self, model: nn.Module, found: Found, config: StorageConfig, ctx: Context
                ) -> tuple[dict[str, SparseLayer | SparseQuantized], dict[str, dict[str, Any]]]:
        """The sparse layers that replace ``found``'s, and their restore records."""
        layers = {c.name: to_sparse(c, encoding=config.encoding) for c in found.layers}
        return layers, {name: layer_record(layer) for name, layer in layers.items()}

    def restore(self, model: nn.Module, config: StorageConfig, record: dict[str, Any]
                ) -> nn.Module:
        """Put empty sparse layers where the saved model has them."""
        return restore_layers(model, record.get("layers", {}))
