"""A compressed model as a ``torch.export`` program, usable like any ``nn.Module`` once loaded.

When a model was handed to :func:`sconce.compress` as an object (so no spec says how to build
it again), the saved folder also holds ``model.pt2``: the model exported in eval mode with a
dynamic batch dimension. :func:`load_program` turns it back into a module that

- accepts any batch size (the batch dimension is a ``torch.export.Dim``; a model whose code
  fixes its batch size is exported with that size and says so in the log),
- switches modes with ``.eval()`` / ``.train()``: the graph's mode-dependent operators
  (``batch_norm``'s ``training`` flag, every dropout's ``train`` flag) are flipped and the
  module recompiled, so training mode uses batch statistics and dropout as the original did,
- moves with ``.to()``, and returns the saved model's outputs (to float rounding: eager
  attention takes a fused kernel the exported graph spells out).

Limits: Python branches on ``self.training`` inside the original ``forward`` were taken in
eval mode at export time and stay that way; BatchNorm's ``num_batches_tracked`` does not
count in training mode (its running statistics do update, with the exported momentum).

Example:
    >>> import io, torch
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Dropout(0.5), nn.Linear(8, 2))
    >>> buffer = io.BytesIO()
    >>> torch.export.save(export_program(net.eval(), torch.randn(1, 4)), buffer)
    >>> _ = buffer.seek(0)
    >>> loaded = load_program(buffer)
    >>> x = torch.randn(7, 4)
    >>> torch.equal(loaded(x), net(x)), loaded.training
    (True, False)
    >>> loaded.train().training, loaded.eval().training
    (True, False)
"""

from __future__ import annotations

import logging
import types
import warnings
from typing import IO, Any

import torch
from torch import fx, nn
from torch.export import Dim, ExportedProgram

logger = logging.getLogger(__name__)

__all__ = ["MODE_FLAGS", "export_program", "load_program", "set_graph_mode"]

MODE_FLAGS: dict[Any, int] = {
    torch.ops.aten.batch_norm.default: 5,
    torch.ops.aten.dropout.default: 2,
    torch.ops.aten.feature_dropout.default: 2,
    torch.ops.aten.alpha_dropout.default: 2,
    torch.ops.aten.feature_alpha_dropout.default: 2,
}
"""Mode-dependent operators of an exported graph and the position of their training flag."""

_EXAMPLE_BATCH = 2  # torch.export specialises a size of 1, so the dynamic example is 2 long


def _batched(inputs: Any, size: int) -> Any:
    if isinstance(inputs, torch.Tensor):
        first = inputs[:1]
        return first.expand(size, *first.shape[1:]).contiguous()
    return tuple(_batched(t, size) for t in inputs)


def export_program(model: nn.Module, example_inputs: Any) -> ExportedProgram:
    """Export ``model`` (in its current mode) with a dynamic batch dimension when it allows one.

    Args:
        model: exported as is; its mode is what the program computes.
        example_inputs: a tensor or tuple of tensors the model accepts (any batch size).

    Returns:
        The program; with a fixed batch size only when the model's code pins it.

    Example:
        >>> program = export_program(nn.Linear(3, 2), torch.randn(1, 3))
        >>> type(program).__name__
        'ExportedProgram'
    """
    args = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    batch = Dim("batch", min=1)
    dynamic = tuple({0: batch} if isinstance(a, torch.Tensor) and a.dim() > 0 else None
                    for a in args)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's internal chatter is not for users
        try:
            return torch.export.export(model, _batched(args, _EXAMPLE_BATCH),
                                       dynamic_shapes=dynamic)
        except Exception as exc:  # the model's code fixes its batch size: export it as is
            logger.info("no dynamic batch dimension for this model (%s); the exported program "
                        "takes batches of %d only", str(exc).splitlines()[0] if str(exc) else
                        type(exc).__name__, _batch_size(args))
            return torch.export.export(model, args)


def _batch_size(args: tuple[Any, ...]) -> int:
    first = next((a for a in args if isinstance(a, torch.Tensor) and a.dim() > 0), None)
    return int(first.shape[0]) if first is not None else 1


def set_graph_mode(graph: fx.Graph, training: bool) -> int:
    """Set the training flag of every mode-dependent operator in ``graph``; return how many.

    Example:
        >>> program = export_program(nn.Dropout(0.5).eval(), torch.randn(1, 3))
        >>> set_graph_mode(program.graph, True)
        1
    """
    changed = 0
    for node in graph.nodes:
        index = MODE_FLAGS.get(node.target) if node.op == "call_function" else None
        if index is None:
            continue
        args = list(node.args)
        while len(args) <= index:  # an omitted trailing flag takes the schema default
            argument = node.target._schema.arguments[len(args)]
            args.append(node.kwargs.get(argument.name, argument.default_value))
        args[index] = training
        node.args = tuple(args)
        node.kwargs = {k: v for k, v in node.kwargs.items()
                       if k != node.target._schema.arguments[index].name}
        changed += 1
    return changed


def _train(self: fx.GraphModule, mode: bool = True) -> fx.GraphModule:
    """``nn.Module.train`` for a loaded program: set the flags, then rewrite its graph."""
    nn.Module.train(self, mode)
    if set_graph_mode(self.graph, mode):
        self.recompile()
    return self


def load_program(source: str | Any | IO[bytes]) -> nn.Module:
    """Load a program saved with ``torch.export.save`` as a module that can switch modes.

    The module starts in eval mode (the mode it was exported in).

    Example:
        >>> load_program("out/model.pt2")(torch.randn(7, 1, 28, 28)).shape  # doctest: +SKIP
        torch.Size([7, 10])
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = torch.export.load(source).module()
    for name in ("train", "eval"):  # torch.export refuses mode switches; this module can
        module.__dict__.pop(name, None)
    module.__dict__["train"] = types.MethodType(_train, module)
    return nn.Module.train(module, False)
