"""Layers whose weight is stored compressed and run in the format chosen for them.

:class:`SparseLinear`, :class:`SparseConv` (1-D and 2-D convolutions) and
:class:`SparseEmbedding` keep their weight only as the tensors of a compressed encoding
(:mod:`sconce_sparse.encoding`), registered as buffers named ``weight_*``: that is what
``state_dict()`` — and so ``model.pt`` — holds. The bias stays a plain tensor (a buffer: the
layers are for inference). At the first forward pass the layer builds the kernel of its
format from the stored weight (a dense copy for ``dense``, CSR arrays for ``numba_csr``, ...)
and keeps it until the layer moves device or loads other weights.

A layer's ``plan`` says which format runs which inputs: ``((max_rows, format), ...)``, the
first entry whose ``max_rows`` (None: any) is at least the input's row count wins. The
engine measures each layer at batch 1 and at the throughput batch and can keep a different
format for each. Row counts are a Linear layer's input vectors, a convolution's output
positions over the whole batch. The layers are for inference: their weights are buffers
(frozen), and an input that needs gradients runs the dense kernels.

Example:
    >>> import torch
    >>> from torch import nn
    >>> linear = nn.Linear(8, 4)
    >>> with torch.no_grad():
    ...     linear.weight[:, ::2] = 0.0
    >>> layer = SparseLinear.from_linear(linear, plan=((None, "numba_csr"),))
    >>> x = torch.randn(3, 8)
    >>> torch.allclose(layer(x), linear(x), atol=1e-6)
    True
    >>> sorted(layer.state_dict())
    ['bias', 'weight_bitmask', 'weight_values']
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sconce_sparse import numba_kernels
from sconce_sparse.encoding import CsrParts, decode_csr, encode, encoding_keys
from sconce_sparse.formats import Kernel, WeightInfo, get_format

logger = logging.getLogger(__name__)

__all__ = ["DENSE_PLAN", "Plan", "SparseConv", "SparseEmbedding", "SparseLayer", "SparseLinear"]

Plan = tuple[tuple[int | None, str], ...]
"""``((max_rows, format), ...)``: which format runs inputs of how many rows."""

DENSE_PLAN: Plan = ((None, "dense"),)
"""Run every input with the dense weight (sparse storage only)."""

_PREFIX = "weight_"
_ALL_KEYS = ("bitmask", "gaps", "row_entries", "values")


def _check_plan(plan: Sequence[Sequence[Any]]) -> Plan:
    checked = []
    for max_rows, name in plan:
        get_format(name)
        checked.append((None if max_rows is None else int(max_rows), str(name)))
    if not checked or checked[-1][0] is not None:
        raise ValueError(f"a plan must end with a (None, format) entry, got {plan!r}")
    return tuple(checked)


class SparseLayer(nn.Module):
    """Base of the sparse layers: the compressed weight, its decoding, the kernel cache.

    Subclasses set ``weight_shape`` and implement ``forward``.
    """

    weight_shape: tuple[int, ...]
    bias: torch.Tensor | None

    def __init__(self, plan: Sequence[Sequence[Any]] = DENSE_PLAN, encoding: str = "bitmask",
                 bias: bool = False) -> None:
        super().__init__()
        self._kernels: dict[str, Any] = {}
        self.set_plan(plan)
        self.encoding = encoding
        for name in encoding_keys(encoding):
            self.register_buffer(_PREFIX + name, torch.zeros(0))
        self.register_buffer("bias", torch.zeros(0) if bias else None)

    # --- the stored weight --------------------------------------------------------------------
    @property
    def matrix_shape(self) -> tuple[int, int]:
        """``(out, in)``: the 2-D view the weight is stored as."""
        rows = self.weight_shape[0]
        return rows, int(np.prod(self.weight_shape[1:]))

    def _stored(self) -> dict[str, torch.Tensor]:
        return {name: getattr(self, _PREFIX + name) for name in encoding_keys(self.encoding)}

    def set_weight(self, weight: torch.Tensor, encoding: str = "auto") -> None:
        """Store ``weight`` (of shape ``weight_shape``) in ``encoding`` (``auto``: the smaller).

        Example:
            >>> layer = SparseLinear(4, 2, bias=False)
            >>> layer.set_weight(torch.eye(2, 4), "relative")
            >>> layer.encoding, layer.nnz
            ('relative', 2)
        """
        if tuple(weight.shape) != tuple(self.weight_shape):
            raise ValueError(f"weight of shape {tuple(weight.shape)} for a layer of "
                             f"{tuple(self.weight_shape)}")
        stored = encode(weight.detach().reshape(self.matrix_shape), encoding)
        for name in encoding_keys(self.encoding):
            delattr(self, _PREFIX + name)
        self.encoding = stored.encoding
        for name, tensor in stored.tensors.items():
            self.register_buffer(_PREFIX + name, tensor)
        self._kernels.clear()

    @property
    def nnz(self) -> int:
        """Stored non-zero weights."""
        return int(torch.count_nonzero(getattr(self, _PREFIX + "values")))

    @property
    def stored_nbytes(self) -> int:
        """Bytes of the compressed weight as saved (the bias not included)."""
        return sum(t.numel() * t.element_size() for t in self._stored().values())

    def csr_parts(self) -> CsrParts:
        """The weight as CSR parts (rows, columns, values), decoded from storage."""
        return decode_csr(self.encoding, self._stored(), self.matrix_shape)

    def dense_weight(self) -> torch.Tensor:
        """The weight as a dense tensor of ``weight_shape``.

        Example:
            >>> layer = SparseLinear(2, 2, bias=False)
            >>> layer.set_weight(torch.tensor([[0.0, 1.0], [2.0, 0.0]]))
            >>> layer.dense_weight()
            tensor([[0., 1.],
                    [2., 0.]])
        """
        return self.csr_parts().to_dense().reshape(self.weight_shape)

    # --- kernels --------------------------------------------------------------------------------
    def format_for(self, rows: int) -> str:
        """The plan's format for an input of ``rows`` rows.

        Example:
            >>> SparseLinear(2, 2, plan=((8, "numba_csr"), (None, "csr"))).format_for(64)
            'csr'
        """
        for max_rows, name in self.plan:
            if max_rows is None or rows <= max_rows:
                return name
        return self.plan[-1][1]

    def kernel(self, name: str) -> Any:
        """The kernel of format ``name`` for this weight (built once, then cached).

        Built outside inference mode, so a kernel first used under ``torch.inference_mode``
        also serves later calls that record gradients.
        """
        kernel = self._kernels.get(name)
        if kernel is None:
            with torch.inference_mode(False):
                kernel = self._kernels[name] = self._build(name)
        return kernel

    def _build(self, name: str) -> Any:
        parts = self.csr_parts()
        info = WeightInfo.of(parts.to_dense()) if name in ("bsr", "numba_bsr", "semi24") else \
            WeightInfo(parts.shape, parts.values.device, parts.values.dtype)
        reason = get_format(name).unavailable(info)
        if reason is not None:
            logger.warning("%s: format %s cannot run here (%s); running dense",
                           type(self).__name__, name, reason)
            name = "dense"
        return get_format(name).build(parts, self.bias, info)

    def set_plan(self, plan: Sequence[Sequence[Any]]) -> None:
        """Use another plan (kernels are rebuilt as needed)."""
        self.plan = _check_plan(plan)
        self.dense_only = all(name == "dense" for _, name in self.plan)
        self._kernels.clear()

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True
               ) -> SparseLayer:
        self._kernels.clear()
        return super()._apply(fn, recurse)  # type: ignore[no-untyped-call]  # torch leaves Module._apply unannotated

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_kernels"] = {}
        return state

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any,
                              **kwargs: Any) -> None:
        incoming = "bitmask" if prefix + _PREFIX + "bitmask" in state_dict else (
            "relative" if prefix + _PREFIX + "gaps" in state_dict else self.encoding)
        device = getattr(self, _PREFIX + "values").device
        for name in encoding_keys(self.encoding):
            delattr(self, _PREFIX + name)
        self.encoding = incoming
        for name in encoding_keys(incoming):
            saved = state_dict.get(prefix + _PREFIX + name)
            shape_of = saved if isinstance(saved, torch.Tensor) else torch.zeros(0)
            self.register_buffer(_PREFIX + name, torch.empty_like(shape_of, device=device))
        bias = state_dict.get(prefix + "bias")
        if self.bias is not None and isinstance(bias, torch.Tensor):
            self.bias = torch.empty_like(bias, device=device)
        self._kernels.clear()
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def rows(self, x: torch.Tensor) -> int:
        """How many rows an input makes for this layer's kernel (what the plan switches on)."""
        raise NotImplementedError

    def run(self, x: torch.Tensor, name: str) -> torch.Tensor:
        """The layer's output on ``x`` computed in format ``name`` (whatever the plan says)."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # dense only: no per-call planning (its Python cost showed at batch 1); the sparse
        # kernels are inference-only, so an input that needs gradients runs dense too
        if self.dense_only or (x.requires_grad and torch.is_grad_enabled()):
            return self.run(x, "dense")
        return self.run(x, self.format_for(self.rows(x)))

    def extra_repr(self) -> str:
        plan = ", ".join(f"{'any' if rows is None else f'<={rows}'} rows: {name}"
                         for rows, name in self.plan)
        return f"weight={tuple(self.weight_shape)}, encoding={self.encoding}, plan=[{plan}]"


class SparseLinear(SparseLayer):
    """A Linear layer with a compressed weight, run in the planned format.

    Example:
        >>> layer = SparseLinear(16, 4)
        >>> layer(torch.randn(2, 3, 16)).shape
        torch.Size([2, 3, 4])
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 plan: Sequence[Sequence[Any]] = DENSE_PLAN, encoding: str = "bitmask") -> None:
        super().__init__(plan, encoding, bias)
        self.in_features = in_features
        self.out_features = out_features
        self.weight_shape = (out_features, in_features)
        if bias:
            self.bias = torch.zeros(out_features)
        self.set_weight(torch.zeros(self.weight_shape), encoding)

    @classmethod
    def from_linear(cls, linear: nn.Linear, plan: Sequence[Sequence[Any]] = DENSE_PLAN,
                    encoding: str = "auto") -> SparseLinear:
        """The sparse form of ``linear`` (its weight and bias copied)."""
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None, plan)
        layer.set_weight(linear.weight, encoding)
        if linear.bias is not None:
            layer.bias = linear.bias.detach().clone()
        return layer.to(linear.weight.device)

    def rows(self, x: torch.Tensor) -> int:
        return x.numel() // self.in_features

    def run(self, x: torch.Tensor, name: str) -> torch.Tensor:
        kernel: Kernel = self.kernel(name)
        if name == "dense":  # F.linear takes any leading dimensions: no reshapes
            return kernel.linear(x)
        out = kernel.linear(x.reshape(-1, self.in_features))
        return out.reshape(*x.shape[:-1], self.out_features)


class _DirectConvKernel:
    """:func:`~sconce_sparse.numba_kernels.conv2d_direct` prepared for one weight."""

    def __init__(self, parts: CsrParts, bias: torch.Tensor | None, layer: SparseConv,
                 padded: tuple[int, int]) -> None:
        _, kh, kw = layer.kernel_geometry
        channel = parts.col // (kh * kw)  # each column is (channel, ky, kx)
        ky = (parts.col // kw) % kh
        kx = parts.col % kw
        height, width = padded
        dil_h, dil_w = layer.dilation2d
        self.offsets = (channel * height * width + ky * dil_h * width + kx * dil_w).numpy()
        self.indptr = parts.crow.to(torch.int32).numpy()
        self.data = parts.values.contiguous().numpy()
        zeros = torch.zeros(parts.shape[0], dtype=parts.values.dtype)
        self.bias = (zeros if bias is None else bias.detach()).numpy()


class SparseConv(SparseLayer):
    """A 1-D or 2-D convolution (``groups=1``, zero padding) with a compressed weight.

    Formats other than ``dense`` and ``numba_direct`` run on the unfolded patches (im2col).

    Example:
        >>> conv = nn.Conv2d(3, 8, 3, padding=1)
        >>> layer = SparseConv.from_conv(conv, plan=((None, "numba_direct"),))
        >>> x = torch.randn(2, 3, 10, 10)
        >>> torch.allclose(layer(x), conv(x), atol=1e-5)
        True
    """

    def __init__(self, dims: int, in_channels: int, out_channels: int,
                 kernel_size: Sequence[int], stride: Sequence[int], padding: Sequence[int],
                 dilation: Sequence[int], bias: bool = True,
                 plan: Sequence[Sequence[Any]] = DENSE_PLAN, encoding: str = "bitmask") -> None:
        super().__init__(plan, encoding, bias)
        if dims not in (1, 2):
            raise ValueError(f"SparseConv runs 1-D and 2-D convolutions, not {dims}-D")
        self.dims = dims
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = tuple(int(k) for k in kernel_size)
        self.stride = tuple(int(s) for s in stride)
        self.padding = tuple(int(p) for p in padding)
        self.dilation = tuple(int(d) for d in dilation)
        self.weight_shape = (out_channels, in_channels, *self.kernel_size)
        if bias:
            self.bias = torch.zeros(out_channels)
        self.set_weight(torch.zeros(self.weight_shape), encoding)

    @classmethod
    def from_conv(cls, conv: nn.Conv1d | nn.Conv2d, plan: Sequence[Sequence[Any]] = DENSE_PLAN,
                  encoding: str = "auto") -> SparseConv:
        """The sparse form of ``conv`` (explicit integer padding, ``groups=1``)."""
        dims = 1 if isinstance(conv, nn.Conv1d) else 2
        padding = conv.padding
        if isinstance(padding, str) or conv.groups != 1 or conv.padding_mode != "zeros":
            raise ValueError("only convolutions with groups=1 and integer zero padding run "
                             "sparse")
        layer = cls(dims, conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                    padding, conv.dilation, conv.bias is not None, plan)
        layer.set_weight(conv.weight, encoding)
        if conv.bias is not None:
            layer.bias = conv.bias.detach().clone()
        return layer.to(conv.weight.device)

    @property
    def kernel_geometry(self) -> tuple[int, int, int]:
        """``(in_channels, kh, kw)`` of the 2-D form."""
        kh, kw = self._as2d(self.kernel_size, 1)
        return self.in_channels, kh, kw

    @property
    def dilation2d(self) -> tuple[int, int]:
        """The dilation of the 2-D form."""
        return self._as2d(self.dilation, 1)

    def _as2d(self, values: tuple[int, ...], fill: int) -> tuple[int, int]:
        return (fill, values[0]) if self.dims == 1 else (values[0], values[1])

    def _geometry(self) -> tuple[tuple[int, int], ...]:
        """Kernel size, stride, padding and dilation of the 2-D form."""
        return (self._as2d(self.kernel_size, 1), self._as2d(self.stride, 1),
                self._as2d(self.padding, 0), self._as2d(self.dilation, 1))

    def _output_size(self, height: int, width: int) -> tuple[int, int]:
        kernel_size, stride, padding, dilation = self._geometry()
        sizes = [(size + 2 * padding[i] - dilation[i] * (kernel_size[i] - 1) - 1) // stride[i] + 1
                 for i, size in enumerate((height, width))]
        return sizes[0], sizes[1]

    def rows(self, x: torch.Tensor) -> int:
        out_h, out_w = self._output_size(x.shape[-2] if self.dims == 2 else 1, x.shape[-1])
        return int(x.shape[0]) * out_h * out_w

    def run(self, x: torch.Tensor, name: str) -> torch.Tensor:
        x2 = x.unsqueeze(2) if self.dims == 1 else x
        if name == "dense":
            weight, stride, padding, dilation = self._dense_conv()
            out = F.conv2d(x2, weight, self.bias, stride, padding, dilation)
            return out.squeeze(2) if self.dims == 1 else out
        kernel_size, stride, padding, dilation = self._geometry()
        n = x2.shape[0]
        out_h, out_w = self._output_size(x2.shape[2], x2.shape[3])
        if name == "numba_direct":
            out = self._direct(x2, padding, stride, (out_h, out_w))
        else:
            cols = F.unfold(x2, kernel_size, dilation, padding, stride)
            xt = cols.transpose(0, 1).reshape(cols.shape[1], n * out_h * out_w)
            yt = self.kernel(name).matmul_t(xt)
            out = yt.reshape(self.out_channels, n, out_h, out_w).transpose(0, 1).contiguous()
        return out.squeeze(2) if self.dims == 1 else out

    def _dense_conv(self) -> tuple[torch.Tensor, tuple[int, int], tuple[int, int], tuple[int, int]]:
        """The 4-D dense weight and the 2-D stride, padding and dilation (built once)."""
        prepared = self._kernels.get("dense_conv")
        if prepared is None:
            kernel_size, stride, padding, dilation = self._geometry()
            weight = self.kernel("dense").weight.reshape(self.out_channels, self.in_channels,
                                                         *kernel_size)
            prepared = self._kernels["dense_conv"] = (weight, stride, padding, dilation)
        return prepared

    def _direct(self, x: torch.Tensor, padding: tuple[int, int], stride: tuple[int, int],
                out_size: tuple[int, int]) -> torch.Tensor:
        xpad = F.pad(x, (padding[1], padding[1], padding[0], padding[0])).contiguous()
        padded = (int(xpad.shape[2]), int(xpad.shape[3]))
        key = f"numba_direct@{padded}"
        kernel = self._kernels.get(key)
        if kernel is None:
            kernel = self._kernels[key] = _DirectConvKernel(self.csr_parts(), self.bias, self,
                                                            padded)
        out = torch.empty(x.shape[0], self.out_channels, *out_size, dtype=x.dtype)
        numba_kernels.match_torch_threads()
        numba_kernels.conv2d_direct(kernel.indptr, kernel.offsets, kernel.data, xpad.numpy(),
                                    kernel.bias, out.numpy(), stride[0], stride[1])
        return out


class SparseEmbedding(SparseLayer):
    """An embedding table stored compressed, looked up densely (storage only).

    Example:
        >>> table = nn.Embedding(10, 4)
        >>> layer = SparseEmbedding.from_embedding(table)
        >>> torch.equal(layer(torch.tensor([1, 2])), table(torch.tensor([1, 2])))
        True
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx: int | None = None,
                 encoding: str = "bitmask") -> None:
        super().__init__(DENSE_PLAN, encoding, bias=False)
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.padding_idx = padding_idx
        self.weight_shape = (num_embeddings, embedding_dim)
        self.set_weight(torch.zeros(self.weight_shape), encoding)

    @classmethod
    def from_embedding(cls, embedding: nn.Embedding, encoding: str = "auto") -> SparseEmbedding:
        """The compressed form of ``embedding`` (no ``max_norm``)."""
        if embedding.max_norm is not None:
            raise ValueError("embeddings with max_norm change their weight when run; "
                             "they are not stored sparse")
        layer = cls(embedding.num_embeddings, embedding.embedding_dim, embedding.padding_idx)
        layer.set_weight(embedding.weight, encoding)
        return layer.to(embedding.weight.device)

    def rows(self, x: torch.Tensor) -> int:
        return x.numel()

    def run(self, x: torch.Tensor, name: str) -> torch.Tensor:
        return F.embedding(x, self.kernel("dense").weight, self.padding_idx)
