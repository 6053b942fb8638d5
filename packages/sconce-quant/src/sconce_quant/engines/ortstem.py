"""Keep a model's thin first convolution in float: faster than int8 in ONNX Runtime.

A convolution reading the model's input with a tiny reduction (input channels x kernel area,
e.g. one grey channel x 3x3 = 9) gives MLAS's int8 convolution almost no work per output to
amortize its im2col and requantization: on the benchmark's VGG (Fashion-MNIST, batch 64, 2
threads, AVX-512 VNNI) that layer took 1.06-1.16 ms as ``QLinearConv`` (14 G MAC/s, against
350-400 for the deeper layers) and 0.24-0.30 ms as a float ``Conv``; on small CNNs with an
RGB 3x3 stem (27) the whole model ran 6-7% faster with it in float, with a grey one 19-25%.
Wider stems (a 7x7 RGB one: 147) were not measured and stay int8. :func:`float_stem` finds
such a stem, with the ReLU and max pooling that follow it, and writes the graph so that all
three run in float and the quantization comes after the pooling (4x fewer values): the ReLU
is moved after the pooling (``maxpool(relu(x)) == relu(maxpool(x))``), so ONNX Runtime
neither propagates the quantization back above the pooling (which left the pooling in slow
NCHW float) nor loses the float part's blocked layout. Whole model: 4.85 -> 4.23 ms at batch
64, 0.104 -> 0.097 ms at batch 1 (same weights, same run).

Example:
    >>> import torch
    >>> from torch import nn
    >>> from sconce_quant.engines.ortmodule import export_onnx_bytes
    >>> model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
    ...                       nn.Conv2d(8, 8, 3)).eval()
    >>> stem = float_stem(export_onnx_bytes(model, torch.randn(1, 1, 8, 8)))
    >>> [name.rsplit("/", 1)[-1] for name in stem.nodes], stem.layers
    (['Conv', 'Relu', 'MaxPool'], ['0', '1', '2'])
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# the largest reduction (input channels per group x kernel area) a stem may have to stay float:
# an RGB 3x3 one
MAX_STEM_REDUCTION = 27


@dataclass
class Stem:
    """A graph with its float stem written for ONNX Runtime, and the stem's nodes.

    Attributes:
        graph: the serialized model (unchanged when there is no stem).
        nodes: node names to keep out of quantization (empty when there is no stem).
        layers: the torch modules those nodes come from, for reports.
    """

    graph: bytes
    nodes: list[str] = field(default_factory=list)
    layers: list[str] = field(default_factory=list)


def float_stem(float_bytes: bytes) -> Stem:
    """The model's thin first convolution (and the ReLU and max pooling right after it) to
    keep in float, with the ReLU moved after the pooling; ``Stem(float_bytes)`` if it has
    none. Only an ungrouped convolution reading a graph input qualifies.
    """
    import onnx

    from sconce_quant.engines.ort import module_of

    model = onnx.load_from_string(float_bytes)
    graph = model.graph
    inputs = {i.name for i in graph.input} - {init.name for init in graph.initializer}
    weights = {init.name: list(init.dims) for init in graph.initializer}
    conv = next((n for n in graph.node if n.op_type == "Conv" and n.input[0] in inputs
                 and _reduction(n, weights) <= MAX_STEM_REDUCTION), None)
    if conv is None:
        return Stem(float_bytes)
    relu = _only_consumer(graph, conv.output[0], "Relu")
    pool = _only_consumer(graph, relu.output[0], "MaxPool") if relu is not None else None
    if pool is not None and len([o for o in pool.output if o]) > 1:
        pool = None  # its indices output would change with the ReLU moved after it
    chain = [node for node in (conv, relu, pool) if node is not None]
    names = [node.name for node in chain]
    if relu is not None and pool is not None:
        _swap(graph, relu, pool)
    return Stem(model.SerializeToString(), names, [module_of(name) for name in names])


def _reduction(conv: Any, weights: dict[str, list[int]]) -> int:
    group = next((a.i for a in conv.attribute if a.name == "group"), 1)
    shape = weights.get(conv.input[1]) if len(conv.input) > 1 else None
    if group != 1 or shape is None or len(shape) < 3:
        return MAX_STEM_REDUCTION + 1
    reduction = 1
    for size in shape[1:]:
        reduction *= size
    return reduction


def _only_consumer(graph: Any, tensor: str, op_type: str) -> Any:
    """The node reading ``tensor`` if it is the only reader, of ``op_type``, and the tensor is
    not a graph output."""
    if tensor in {o.name for o in graph.output}:
        return None
    readers = [n for n in graph.node if tensor in n.input]
    return readers[0] if len(readers) == 1 and readers[0].op_type == op_type else None


def _swap(graph: Any, relu: Any, pool: Any) -> None:
    """``x -> Relu -> MaxPool -> y`` becomes ``x -> MaxPool -> Relu -> y`` (same values)."""
    source, target = relu.input[0], pool.output[0]
    pooled = f"{pool.output[0]}_before_relu"
    pool.input[0], pool.output[0] = source, pooled
    relu.input[0], relu.output[0] = pooled, target
    nodes = list(graph.node)
    first = min(nodes.index(relu), nodes.index(pool))
    rest = [n for n in nodes if n is not relu and n is not pool]
    del graph.node[:]
    graph.node.extend([*rest[:first], pool, relu, *rest[first:]])
