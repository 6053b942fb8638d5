"""Trace a model into a torch.fx graph with real shapes on every node.

``torch.fx.symbolic_trace`` follows the Python code of every module except the leaf layers of
``torch.nn`` (Conv2d, Linear, MultiheadAttention ...), which stay single ``call_module``
nodes. Shape propagation with example inputs then puts the real shape of every value on its
node. When the tracer cannot follow the code (data-dependent control flow, unsupported
Python), the error names the module and the source line where it stopped.

Example:
    >>> import torch
    >>> from torch import nn
    >>> graph = trace(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()), torch.randn(1, 3, 8, 8))
    >>> [n.op for n in graph.graph.nodes]
    ['placeholder', 'call_module', 'call_module', 'output']
"""

from __future__ import annotations

import fnmatch
import logging
import os
import traceback
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import fx, nn

from sconce.errors import TechniqueError

logger = logging.getLogger(__name__)

_TORCH_DIR = os.path.dirname(torch.__file__)


class _PathTracer(fx.Tracer):
    """A tracer that remembers the innermost module being traced when tracing fails, and
    keeps opaque the modules matching ``leaves`` (fnmatch patterns) or ``is_leaf``."""

    def __init__(self, leaves: Sequence[str] = (),
                 is_leaf: Callable[[nn.Module], bool] | None = None) -> None:
        super().__init__()
        self.failed_in: str | None = None
        self.leaves = tuple(leaves)
        self.is_leaf = is_leaf

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if self.leaves and any(fnmatch.fnmatchcase(module_qualified_name, pattern)
                               for pattern in self.leaves):
            return True
        if self.is_leaf is not None and self.is_leaf(m):
            return True
        return super().is_leaf_module(m, module_qualified_name)

    def call_module(self, m: nn.Module, forward: Any, args: tuple[Any, ...],
                    kwargs: dict[str, Any]) -> Any:
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception:
            if self.failed_in is None:
                self.failed_in = self.path_of_module(m) or "<root>"
            raise


def _user_line(exc: BaseException) -> str:
    """The innermost ``file:line: code`` of the traceback outside torch itself."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__)
              if not f.filename.startswith(_TORCH_DIR) and "sconce_prune" not in f.filename]
    if not frames:
        return ""
    frame = frames[-1]
    return f"{os.path.basename(frame.filename)}:{frame.lineno}: {(frame.line or '').strip()}"


def trace(model: nn.Module, example_inputs: Any, *, shapes: bool = True,
          leaves: Sequence[str] = (), is_leaf: Callable[[nn.Module], bool] | None = None,
          interpreter: type[ShapeRecorder] | None = None) -> fx.GraphModule:
    """Trace ``model`` and annotate every node with its real output shape.

    Args:
        model: the model (not modified; it is traced in eval mode and put back).
        example_inputs: a tensor or a tuple of tensors the model accepts.
        shapes: record shapes (False: structure only).
        leaves: fnmatch patterns of modules kept opaque (not traced through).
        is_leaf: further modules kept opaque (layers a rule describes).
        interpreter: the shape-propagating interpreter class.

    Returns:
        A GraphModule sharing ``model``'s submodules; ``node.meta["tensor_meta"]`` holds
        the shapes.

    Raises:
        TechniqueError: the tracer cannot follow the model (names the module and the line).

    Example:
        >>> import torch
        >>> gm = trace(torch.nn.Sequential(torch.nn.Linear(4, 2)), torch.randn(1, 4))
        >>> [tuple(n.meta["tensor_meta"].shape) for n in gm.graph.nodes if n.op != "output"]
        [(1, 4), (1, 2)]
    """
    tracer = _PathTracer(leaves, is_leaf)
    try:
        graph = tracer.trace(model)
    except Exception as exc:
        where = tracer.failed_in or "<root>"
        line = _user_line(exc)
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise TechniqueError(
            f"prune.channel cannot trace the model: in module {where!r}"
            + (f" at {line}" if line else "")
            + f" the tracer stopped ({type(exc).__name__}: {first}). Channel pruning needs "
            "a torch.fx-traceable forward; avoid data-dependent Python control flow there, or "
            "wrap that part in a leaf module listed in ignored_layers"
        ) from None
    gm = fx.GraphModule(tracer.root, graph, type(model).__name__)
    if not shapes:
        return gm
    args = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    was_training = model.training
    model.eval()
    try:
        propagate(gm, args, interpreter or ShapeRecorder)
    except TechniqueError:
        raise
    except Exception as exc:
        raise TechniqueError(
            f"prune.channel could not run the traced model on the example inputs "
            f"({type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}); give example "
            "inputs the model accepts"
        ) from None
    finally:
        model.train(was_training)
    return gm


class Shape(tuple[int, ...]):
    """A recorded output shape (``node.meta["tensor_meta"].shape``)."""

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self)


def _shape_of(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return Shape(int(s) for s in value.shape)
    if isinstance(value, (tuple, list)) and not isinstance(value, torch.Size):
        shapes = [_shape_of(v) for v in value]
        return shapes if any(s is not None for s in shapes) else None
    return None


class ShapeRecorder(fx.Interpreter):
    """Runs the graph and records each node's output shape (lighter than ``ShapeProp``).

    Example:
        >>> gm = fx.symbolic_trace(nn.Sequential(nn.Linear(2, 3)))
        >>> _ = ShapeRecorder(gm).propagate(torch.randn(1, 2))
        >>> [n.meta.get("tensor_meta") for n in gm.graph.nodes][1].shape
        (1, 3)
    """

    def __init__(self, module: fx.GraphModule) -> None:
        super().__init__(module)
        self._modules = dict(module.named_modules())

    def run_node(self, n: fx.Node) -> Any:
        result = super().run_node(n)
        n.meta["tensor_meta"] = _shape_of(result)
        return result

    def call_module(self, target: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Call a layer, found by name once per run rather than by walking its path."""
        return self._modules[target](*args, **kwargs)

    def propagate(self, *args: Any) -> Any:
        """Run the graph on ``args``."""
        return self.run(*args)


def propagate(gm: fx.GraphModule, args: tuple[Any, ...],
              interpreter: type[ShapeRecorder] = ShapeRecorder) -> None:
    """Record every node's shape by running the graph on the inputs (no autograd).

    A real run at batch 1 is cheaper than meta-tensor propagation, whose shape functions
    run in Python.
    """
    with torch.no_grad():
        interpreter(gm).propagate(*args)


def node_module(node: fx.Node) -> str:
    """The qualified name of the module whose code produced ``node`` ("" for the root)."""
    if node.op == "call_module":
        return str(node.target)
    stack = node.meta.get("nn_module_stack") or {}
    return str(next(reversed(stack))) if stack else ""


def node_shape(node: Any) -> Any:
    """The shape(s) ShapeProp recorded for ``node``: a tuple, a list of them, or None."""
    if not isinstance(node, fx.Node):
        return None
    return _shapes(node.meta.get("tensor_meta"))


def _shapes(meta: Any) -> Any:
    if meta is None:
        return None
    if isinstance(meta, Shape) or hasattr(meta, "shape"):
        return tuple(int(s) for s in meta.shape)
    if isinstance(meta, (tuple, list)):
        return [_shapes(m) for m in meta]
    if isinstance(meta, dict):
        return {k: _shapes(v) for k, v in meta.items()}
    return None


def describe_op(node: fx.Node) -> str:
    """A readable name of a node's operation (``torch.cat``, ``.view``, ``Conv2d``)."""
    owner = node.graph.owning_module
    if node.op == "call_module" and owner is not None:
        return type(owner.get_submodule(str(node.target))).__name__
    if node.op == "call_method":
        return f".{node.target}()"
    if node.op == "call_function":
        target = node.target
        module = getattr(target, "__module__", None) or ""
        name = getattr(target, "__name__", str(target))
        if module in ("_operator", "operator"):
            return f"operator.{name}"
        if module.startswith("torch"):
            return f"torch.{name}" if "functional" not in module else f"F.{name}"
        return f"{module}.{name}" if module else name
    return node.op
