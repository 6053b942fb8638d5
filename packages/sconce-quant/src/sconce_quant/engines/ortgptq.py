"""GPTQ rounding of a float ONNX graph's weights onto the grid ONNX Runtime quantizes them to.

ONNX Runtime quantizes each weight itself, symmetrically, with the step ``max|w| / qmax``
per output channel (or per tensor) and each weight at its nearest code. On CPUs without
VNNI its int8 kernels need 7-bit weights (``qmax`` 64, ``reduce_range``), and nearest
rounding on that coarse grid is most of the int8 model's error: measured on the VGG of
``benchmarks/quant.py``, 7-bit nearest-rounded weights alone cost 0.12 accuracy points, the
whole int8 model's loss. GPTQ instead rounds each layer's weights column by column on the
same grid, spreading every rounding error over the columns still to be rounded so the
layer's output on the calibration inputs moves least. The rounded values are written back
into the float graph, each row's largest weight kept as it was, so ONNX Runtime computes
the same step and recovers exactly these codes.

Weights rounded: Conv (2-D, one group), Gemm (``transB`` set, ``transA`` not) and MatMul
with a 2-D weight initializer, each read by no other node. Their Hessians (``2 X X^T`` over
the layer's inputs, a Conv's as image patches) are summed while the calibration pass runs
the graph (:class:`HessianCollector`).

Example:
    >>> import onnx, torch
    >>> from torch import nn
    >>> from sconce_quant.engines.ortmodule import export_onnx_bytes
    >>> float_bytes = export_onnx_bytes(nn.Sequential(nn.Linear(8, 4)), torch.randn(1, 8))
    >>> sites = weight_sites(onnx.load_from_string(float_bytes))
    >>> [site.kind for site in sites]
    ['gemm']
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from sconce_quant.gptq import gptq_round_symmetric

logger = logging.getLogger(__name__)

MAX_ROWS = 16384
"""Input rows summed into a Hessian at once (a conv's patches of a batch of large images
would otherwise take gigabytes)."""


@dataclass(frozen=True)
class WeightSite:
    """A node whose weight initializer GPTQ can round, and how to read its inputs.

    Attributes:
        node: the node's name.
        weight: the weight initializer's name.
        input: the activation tensor the weight multiplies.
        kind: ``conv``, ``gemm`` or ``matmul``.
        kernel, pads, strides, dilations: a Conv's attributes (pads as
            ``(top, left, bottom, right)``).

    Example:
        >>> WeightSite("fc", "fc.weight", "x", "gemm").rows_axis
        0
    """

    node: str
    weight: str
    input: str
    kind: str
    kernel: tuple[int, int] = (1, 1)
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)
    strides: tuple[int, int] = (1, 1)
    dilations: tuple[int, int] = (1, 1)

    @property
    def rows_axis(self) -> int:
        """The weight axis of output channels (ONNX Runtime's per-channel axis)."""
        return 1 if self.kind == "matmul" else 0

    def column_blocks(self, value: np.ndarray, max_rows: int = MAX_ROWS
                      ) -> Iterator[torch.Tensor]:
        """The layer's inputs as rows of the weight's columns, ``(rows, in)`` blocks of about
        ``max_rows`` rows (a conv's image patches are unfolded a few images at a time).

        Example:
            >>> site = WeightSite("c", "w", "x", "conv", kernel=(3, 3), pads=(1, 1, 1, 1))
            >>> [tuple(b.shape) for b in site.column_blocks(np.zeros((2, 4, 5, 5)), 30)]
            [(25, 36), (25, 36)]
        """
        x = torch.from_numpy(np.asarray(value, dtype=np.float32))
        if self.kind != "conv":
            rows = x.reshape(-1, x.shape[-1])
            for start in range(0, rows.shape[0], max_rows):
                yield rows[start:start + max_rows]
            return
        top, left, bottom, right = self.pads
        x = F.pad(x, (left, right, top, bottom))
        per_image = None
        start = 0
        while start < x.shape[0]:
            count = 1 if per_image is None else max(1, max_rows // per_image)
            patches = F.unfold(x[start:start + count], self.kernel, dilation=self.dilations,
                               stride=self.strides)
            per_image = patches.shape[2]
            start += count
            yield patches.transpose(1, 2).reshape(-1, patches.shape[1])

    def as_rows(self, weight: np.ndarray) -> torch.Tensor:
        """The weight as ``(out, in)``, columns ordered like :meth:`column_blocks`."""
        w = torch.from_numpy(np.array(weight, dtype=np.float32))
        return w.t() if self.kind == "matmul" else w.reshape(w.shape[0], -1)

    def from_rows(self, rows: torch.Tensor, shape: Sequence[int]) -> np.ndarray:
        """The inverse of :meth:`as_rows`."""
        w = rows.t() if self.kind == "matmul" else rows
        return w.reshape(tuple(shape)).contiguous().numpy()


def weight_sites(model: object) -> list[WeightSite]:
    """The nodes of an ONNX model whose weights :func:`round_weights` can round.

    Example:
        >>> import onnx
        >>> weight_sites(onnx.ModelProto())
        []
    """
    import onnx

    graph = model.graph  # type: ignore[attr-defined]
    initializers = {init.name: init for init in graph.initializer}
    readers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    sites = []
    for node in graph.node:
        if len(node.input) < 2 or node.input[1] not in initializers \
                or readers.get(node.input[1], 0) != 1 or node.input[0] in initializers:
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        dims = len(initializers[node.input[1]].dims)
        if node.op_type == "Conv" and dims == 4 and attrs.get("group", 1) == 1 \
                and attrs.get("auto_pad", b"NOTSET") in (b"NOTSET", "NOTSET"):
            kernel = tuple(initializers[node.input[1]].dims[2:])
            sites.append(WeightSite(
                node.name, node.input[1], node.input[0], "conv",
                kernel=(int(kernel[0]), int(kernel[1])),
                pads=tuple(int(p) for p in attrs.get("pads", (0, 0, 0, 0))),  # type: ignore[arg-type]
                strides=tuple(int(s) for s in attrs.get("strides", (1, 1))),  # type: ignore[arg-type]
                dilations=tuple(int(d) for d in attrs.get("dilations", (1, 1)))))  # type: ignore[arg-type]
        elif node.op_type == "Gemm" and dims == 2 and attrs.get("transB", 0) == 1 \
                and attrs.get("transA", 0) == 0:
            sites.append(WeightSite(node.name, node.input[1], node.input[0], "gemm"))
        elif node.op_type == "MatMul" and dims == 2:
            sites.append(WeightSite(node.name, node.input[1], node.input[0], "matmul"))
    return sites


class HessianCollector:
    """Sums ``X^T X`` of every site's inputs while calibration runs the graph.

    Example:
        >>> site = WeightSite("fc", "fc.weight", "x", "gemm")
        >>> collector = HessianCollector([site])
        >>> collector.update("x", np.ones((4, 3), dtype=np.float32))
        >>> collector.hessian(site)
        tensor([[2., 2., 2.],
                [2., 2., 2.],
                [2., 2., 2.]])
    """

    def __init__(self, sites: Sequence[WeightSite]) -> None:
        self.sites = list(sites)
        self._by_input: dict[str, list[WeightSite]] = {}
        for site in self.sites:
            self._by_input.setdefault(site.input, []).append(site)
        self._sums: dict[str, torch.Tensor] = {}
        self._counts: dict[str, int] = {}

    @property
    def inputs(self) -> set[str]:
        """The tensor names whose values :meth:`update` needs."""
        return set(self._by_input)

    def update(self, name: str, value: np.ndarray) -> None:
        """Add one batch's values of tensor ``name``."""
        for site in self._by_input.get(name, ()):
            for block in site.column_blocks(value):
                if block.shape[0] == 0:
                    continue
                x = block.to(torch.float64)
                total = self._sums.get(site.node)
                self._sums[site.node] = x.t() @ x if total is None else total + x.t() @ x
                self._counts[site.node] = self._counts.get(site.node, 0) + x.shape[0]

    def hessian(self, site: WeightSite) -> torch.Tensor | None:
        """``2 X X^T / samples`` of ``site``'s inputs, None when it saw none."""
        total = self._sums.get(site.node)
        if total is None:
            return None
        return (2.0 * total / self._counts[site.node]).to(torch.float32)

    def hessians(self) -> dict[str, tuple[WeightSite, torch.Tensor]]:
        """Every site that saw inputs, by node name, with its Hessian."""
        found = {}
        for site in self.sites:
            h = self.hessian(site)
            if h is not None:
                found[site.node] = (site, h)
        return found


def round_weights(float_bytes: bytes, hessians: dict[str, tuple[WeightSite, torch.Tensor]],
                  *, qmax: int, per_channel: bool, exclude: Collection[str] = ()
                  ) -> tuple[bytes, int]:
    """``float_bytes`` with the weights of the sites in ``hessians`` (but not the nodes in
    ``exclude``) GPTQ-rounded onto ONNX Runtime's symmetric grid; and how many were.

    Args:
        qmax: the largest weight code ONNX Runtime will use (64 with ``reduce_range``, else
            127).
        per_channel: one step per output channel (else one per tensor), as ONNX Runtime
            will quantize.

    Example:
        >>> import onnx, torch
        >>> from torch import nn
        >>> from sconce_quant.engines.ortmodule import export_onnx_bytes
        >>> layer = nn.Linear(8, 4)
        >>> float_bytes = export_onnx_bytes(nn.Sequential(layer), torch.randn(1, 8))
        >>> site, = weight_sites(onnx.load_from_string(float_bytes))
        >>> collector = HessianCollector([site])
        >>> collector.update(site.input, torch.randn(64, 8).numpy())
        >>> rounded, count = round_weights(float_bytes, collector.hessians(), qmax=64,
        ...                                per_channel=True)
        >>> count
        1
    """
    weights = gptq_weights(float_bytes, hessians, qmax=qmax, per_channel=per_channel)
    return replace_weights(float_bytes, weights, exclude)


def gptq_weights(float_bytes: bytes, hessians: dict[str, tuple[WeightSite, torch.Tensor]],
                 *, qmax: int, per_channel: bool) -> dict[str, tuple[str, np.ndarray]]:
    """The GPTQ-rounded weight of every site in ``hessians``: ``{node: (initializer name,
    rounded values)}`` (the expensive half of :func:`round_weights`, done once per model).

    Example:
        >>> from sconce_quant.engines.ortmodule import export_onnx_bytes
        >>> graph = export_onnx_bytes(torch.nn.ReLU(), torch.randn(1, 2))
        >>> gptq_weights(graph, {}, qmax=64, per_channel=True)  # no weighted layer: nothing
        {}
    """
    import onnx
    from onnx import numpy_helper

    graph = onnx.load_from_string(float_bytes).graph
    initializers = {init.name: init for init in graph.initializer}
    rounded: dict[str, tuple[str, np.ndarray]] = {}
    for node_name, (site, hessian) in hessians.items():
        if site.weight not in initializers:
            continue
        original = numpy_helper.to_array(initializers[site.weight])
        rows = site.as_rows(original)
        if rows.shape[1] != hessian.shape[0]:
            logger.info("GPTQ skips %s: its weight has %d inputs, its Hessian %d", node_name,
                        rows.shape[1], hessian.shape[0])
            continue
        rounded[node_name] = (site.weight, site.from_rows(
            _round_rows(rows, hessian, qmax, per_channel), original.shape))
    return rounded


def replace_weights(float_bytes: bytes, weights: dict[str, tuple[str, np.ndarray]],
                    exclude: Collection[str] = ()) -> tuple[bytes, int]:
    """``float_bytes`` with the initializers of :func:`gptq_weights` replaced, except those of
    the nodes in ``exclude`` (kept in float with their own weights); and how many were.

    Example:
        >>> from sconce_quant.engines.ortmodule import export_onnx_bytes
        >>> graph = export_onnx_bytes(torch.nn.ReLU(), torch.randn(1, 2))
        >>> replace_weights(graph, {})[1]
        0
    """
    import onnx
    from onnx import numpy_helper

    model = onnx.load_from_string(float_bytes)
    initializers = {init.name: init for init in model.graph.initializer}
    count = 0
    for node_name, (name, values) in weights.items():
        if node_name in exclude or name not in initializers:
            continue
        initializers[name].CopyFrom(numpy_helper.from_array(values, name))
        count += 1
    return model.SerializeToString(), count


def _round_rows(rows: torch.Tensor, hessian: torch.Tensor, qmax: int, per_channel: bool
                ) -> torch.Tensor:
    """GPTQ on ``max|w| / qmax`` steps, each row's (or the tensor's) largest weight put back
    so the quantizer derives the same step."""
    magnitude = rows.abs()
    if per_channel:
        step = magnitude.amax(dim=1) / qmax
    else:
        step = magnitude.amax().reshape(1) / qmax
    rounded = gptq_round_symmetric(rows, hessian, step, qmax)
    if per_channel:
        where = magnitude.argmax(dim=1)
        index = torch.arange(rows.shape[0])
        rounded[index, where] = rows[index, where]
    else:
        row, column = divmod(int(magnitude.argmax()), rows.shape[1])
        rounded[row, column] = rows[row, column]
    return rounded
