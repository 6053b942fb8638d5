"""Execution formats: the ways a sparse weight can be multiplied, each a small kernel object.

Every format turns the weight (as :class:`~sconce_sparse.encoding.CsrParts`) into a kernel
computing ``W @ xt + bias`` for ``xt`` of shape ``(in, m)``: a Linear layer calls it on its
transposed input rows, a convolution on its unfolded patches (im2col). ``dense`` is the
baseline every other format is measured against.

========== =========================================================== ==============
format     kernel                                                      runs on
========== =========================================================== ==============
dense      ``torch.mm`` / ``F.linear`` on the dense weight             any device
csr        ``torch.sparse`` CSR (MKL on CPU, cuSPARSE on CUDA)          any device
bsr        ``torch.sparse`` BSR, square tiles of the detected block     any device
numba_csr  numba CSR kernels, output rows in parallel                   CPU
numba_bsr  numba block kernels, any tile shape                          CPU
semi24     ``to_sparse_semi_structured`` (2:4 along the inputs)         CUDA
========== =========================================================== ==============

Convolutions add ``numba_direct`` (:class:`DirectConv`), a direct sparse convolution that
never builds the unfolded patches.

Example:
    >>> import torch
    >>> from sconce_sparse.encoding import encode, decode_csr
    >>> weight = torch.tensor([[0.0, 2.0], [1.0, 0.0]])
    >>> parts = decode_csr("bitmask", encode(weight, "bitmask").tensors, (2, 2))
    >>> kernel = get_format("csr").build(parts, None, WeightInfo.of(weight))
    >>> kernel.linear(torch.tensor([[1.0, 10.0]]))
    tensor([[20.,  1.]])
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from sconce.errors import ConfigError
from sconce_sparse import numba_kernels
from sconce_sparse.blocks import detect_block, detect_square_block
from sconce_sparse.encoding import CsrParts

logger = logging.getLogger(__name__)

__all__ = [
    "CONV_ONLY_FORMATS", "FORMATS", "DirectConv", "Format", "Kernel", "WeightInfo",
    "check_formats", "get_format", "is_two_four",
]


def is_two_four(matrix: torch.Tensor) -> bool:
    """Whether every group of 4 consecutive inputs of each row holds at most 2 non-zeros.

    Example:
        >>> is_two_four(torch.tensor([[1.0, 0.0, 2.0, 0.0]])), is_two_four(torch.ones(1, 4))
        (True, False)
    """
    if matrix.shape[-1] % 4:
        return False
    groups = (matrix.reshape(matrix.shape[0], -1, 4) != 0).sum(-1)
    return bool((groups <= 2).all())


@dataclass(frozen=True)
class WeightInfo:
    """What formats need to know about a weight to say whether they can run it.

    Attributes:
        shape: ``(out, in)`` of the 2-D view.
        device: where it lives.
        dtype: its dtype.
        block: the detected tile of its zeros (any shape), or None.
        square_block: the detected square tile, or None.
        two_four: whether it has a 2:4 pattern along the inputs.

    Example:
        >>> WeightInfo.of(torch.eye(8)).block is None
        True
    """

    shape: tuple[int, int]
    device: torch.device
    dtype: torch.dtype
    block: tuple[int, int] | None = None
    square_block: tuple[int, int] | None = None
    two_four: bool = False

    @classmethod
    def of(cls, matrix: torch.Tensor) -> WeightInfo:
        """Inspect a 2-D weight (its block structure and 2:4 pattern)."""
        matrix = matrix.detach().reshape(matrix.shape[0], -1)
        return cls((int(matrix.shape[0]), int(matrix.shape[1])), matrix.device, matrix.dtype,
                   detect_block(matrix), detect_square_block(matrix), is_two_four(matrix))


class Kernel:
    """A weight prepared for one format: ``matmul_t(xt) = W @ xt + bias[:, None]``.

    Subclasses implement :meth:`matmul_t`; :meth:`linear` runs a Linear layer's rows.
    """

    def __init__(self, out_features: int, bias: torch.Tensor | None) -> None:
        self.out_features = out_features
        self.bias = bias

    def matmul_t(self, xt: torch.Tensor) -> torch.Tensor:
        """``W @ xt + bias[:, None]`` for ``xt`` of shape ``(in, m)``; returns ``(out, m)``."""
        raise NotImplementedError

    def linear(self, x: torch.Tensor) -> torch.Tensor:
        """``x @ W.T + bias`` for ``x`` of shape ``(m, in)``, contiguous ``(m, out)``."""
        return self.matmul_t(x.t()).t().contiguous()


class _DenseKernel(Kernel):
    def __init__(self, parts: CsrParts, bias: torch.Tensor | None) -> None:
        super().__init__(parts.shape[0], bias)
        self.weight = parts.to_dense()

    def matmul_t(self, xt: torch.Tensor) -> torch.Tensor:
        if self.bias is None:
            return torch.mm(self.weight, xt)
        return torch.addmm(self.bias[:, None], self.weight, xt)

    def linear(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


class _TorchSparseKernel(Kernel):
    def __init__(self, matrix: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__(int(matrix.shape[0]), bias)
        self.matrix = matrix

    def matmul_t(self, xt: torch.Tensor) -> torch.Tensor:
        out = torch.mm(self.matrix, xt)
        return out if self.bias is None else out.add_(self.bias[:, None])


class _NumbaKernel(Kernel):
    """Runs one input row as a gather (``*_matvec``), a few rows against the transposed
    input (``*_matmul_t``), many rows against 16-row panels (``*_matmul_panels``)."""

    def __init__(self, out_features: int, bias: torch.Tensor | None, dtype: torch.dtype) -> None:
        super().__init__(out_features, bias)
        zeros = torch.zeros(out_features, dtype=dtype)
        self.bias_array = (zeros if bias is None else bias.detach().to(dtype)).numpy()

    def _run_vector(self, x: np.ndarray, y: np.ndarray) -> None:
        raise NotImplementedError

    def _run_matrix(self, xt: np.ndarray, yt: np.ndarray) -> None:
        raise NotImplementedError

    def _run_panels(self, panels: np.ndarray, out: np.ndarray) -> None:
        raise NotImplementedError

    def matmul_t(self, xt: torch.Tensor) -> torch.Tensor:
        numba_kernels.match_torch_threads()
        m = xt.shape[1]
        if m == 1:
            x = xt.reshape(-1).contiguous()
            y = torch.empty(self.out_features, dtype=x.dtype)
            self._run_vector(x.numpy(), y.numpy())
            return y.reshape(-1, 1)
        yt = torch.empty(self.out_features, m, dtype=xt.dtype)
        if m < numba_kernels.PANEL:
            self._run_matrix(xt.contiguous().numpy(), yt.numpy())
        else:
            self._run_panels(numba_kernels.panels_of(xt.t()).numpy(), yt.numpy().T)
        return yt

    def linear(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] < numba_kernels.PANEL:
            return super().linear(x)
        numba_kernels.match_torch_threads()
        y = torch.empty(x.shape[0], self.out_features, dtype=x.dtype)
        self._run_panels(numba_kernels.panels_of(x).numpy(), y.numpy())
        return y


class _NumbaCsrKernel(_NumbaKernel):
    def __init__(self, parts: CsrParts, bias: torch.Tensor | None) -> None:
        super().__init__(parts.shape[0], bias, parts.values.dtype)
        self.indptr = parts.crow.to(torch.int32).numpy()
        self.indices = parts.col.to(torch.int32).numpy()
        self.data = parts.values.contiguous().numpy()

    def _run_vector(self, x: np.ndarray, y: np.ndarray) -> None:
        numba_kernels.csr_matvec(self.indptr, self.indices, self.data, x, self.bias_array, y)

    def _run_matrix(self, xt: np.ndarray, yt: np.ndarray) -> None:
        numba_kernels.csr_matmul_t(self.indptr, self.indices, self.data, xt, self.bias_array, yt)

    def _run_panels(self, panels: np.ndarray, out: np.ndarray) -> None:
        numba_kernels.csr_matmul_panels(self.indptr, self.indices, self.data, panels,
                                        self.bias_array, out)


def csr_to_blocks(parts: CsrParts, block: tuple[int, int]
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Block rows pointers, block columns and ``(n, r, c)`` tiles, built without the dense matrix.

    Example:
        >>> from sconce_sparse.encoding import encode, decode_csr
        >>> weight = torch.kron(torch.eye(2), torch.ones(2, 2))
        >>> parts = decode_csr("bitmask", encode(weight).tensors, (4, 4))
        >>> crow, col, tiles = csr_to_blocks(parts, (2, 2))
        >>> crow.tolist(), col.tolist(), tiles.shape
        ([0, 1, 2], [0, 1], torch.Size([2, 2, 2]))
    """
    r, c = block
    rows, cols = parts.shape
    if rows % r or cols % c:
        raise ValueError(f"block {block} does not divide a {rows}x{cols} weight")
    row = parts.rows()
    per_row = cols // c
    keys = (row // r) * per_row + parts.col // c
    unique, inverse = torch.unique(keys, sorted=True, return_inverse=True)
    tiles = torch.zeros(unique.numel(), r, c, dtype=parts.values.dtype)
    tiles[inverse, row % r, parts.col % c] = parts.values
    counts = torch.bincount(unique // per_row, minlength=rows // r)
    crow = torch.zeros(rows // r + 1, dtype=torch.int64)
    crow[1:] = torch.cumsum(counts, 0)
    return crow, unique % per_row, tiles


class _NumbaBsrKernel(_NumbaKernel):
    def __init__(self, parts: CsrParts, bias: torch.Tensor | None, block: tuple[int, int]) -> None:
        super().__init__(parts.shape[0], bias, parts.values.dtype)
        crow, col, tiles = csr_to_blocks(parts, block)
        self.indptr = crow.to(torch.int32).numpy()
        self.indices = col.to(torch.int32).numpy()
        self.tiles = tiles.contiguous().numpy()

    def _run_vector(self, x: np.ndarray, y: np.ndarray) -> None:
        numba_kernels.bsr_matvec(self.indptr, self.indices, self.tiles, x, self.bias_array, y)

    def _run_matrix(self, xt: np.ndarray, yt: np.ndarray) -> None:
        numba_kernels.bsr_matmul_t(self.indptr, self.indices, self.tiles, xt, self.bias_array, yt)

    def _run_panels(self, panels: np.ndarray, out: np.ndarray) -> None:
        numba_kernels.bsr_matmul_panels(self.indptr, self.indices, self.tiles, panels,
                                        self.bias_array, out)


class _SemiStructuredKernel(Kernel):
    def __init__(self, parts: CsrParts, bias: torch.Tensor | None) -> None:
        from torch.sparse import SparseSemiStructuredTensorCUTLASS, to_sparse_semi_structured

        super().__init__(parts.shape[0], bias)
        dense = parts.to_dense()
        self.weight = (SparseSemiStructuredTensorCUTLASS.from_dense(dense)
                       if dense.dtype == torch.float32 else to_sparse_semi_structured(dense))

    def matmul_t(self, xt: torch.Tensor) -> torch.Tensor:
        return self.linear(xt.t()).t()

    def linear(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


class Format:
    """One execution format: whether it can run a weight, and the kernel that does.

    Example:
        >>> get_format("numba_csr").unavailable(WeightInfo.of(torch.eye(4)))  # None: it can
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""

    def unavailable(self, info: WeightInfo) -> str | None:
        """Why this format cannot run the weight, or None when it can."""
        return None

    def build(self, parts: CsrParts, bias: torch.Tensor | None, info: WeightInfo) -> Kernel:
        """The kernel for this weight."""
        raise NotImplementedError


def _cpu_float32(info: WeightInfo) -> str | None:
    if info.device.type != "cpu":
        return "CPU only"
    if info.dtype != torch.float32:
        return "float32 only"
    return None


class Dense(Format):
    name, description = "dense", "the dense weight (torch's dense kernels)"

    def build(self, parts: CsrParts, bias: torch.Tensor | None, info: WeightInfo) -> Kernel:
        return _DenseKernel(parts, bias)


class TorchCsr(Format):
    name, description = "csr", "torch.sparse CSR (MKL on CPU, cuSPARSE on CUDA)"

    def build(self, parts: CsrParts, bias: torch.Tensor | None, info: WeightInfo) -> Kernel:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's "beta" notice is not for users
            matrix = torch.sparse_csr_tensor(parts.crow, parts.col, parts.values, parts.shape,
                                             check_invariants=False)
        return _TorchSparseKernel(matrix, bias)


class TorchBsr(Format):
    name, description = "bsr", "torch.sparse BSR on square tiles"

    def unavailable(self, info: WeightInfo) -> str | None:
        return None if info.square_block else "no square block structure"

    def build(self, parts: CsrParts, bias: torch.Tensor | None, info: WeightInfo) -> Kernel:
        assert info.square_block is not None
        crow, col, tiles = csr_to_blocks(parts, info.square_block)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            matrix = torch.sparse_bsr_tensor(crow, col, tiles, parts.shape,
                                             check_invariants=False)
        return _TorchSparseKernel(matrix.to(parts.values.device), bias)


class NumbaCsr(Format):
    name, description = "numba_csr", "numba CSR kernels, rows in parallel"

    def unavailable(self, info: WeightInfo) -> str | None:
        return _cpu_float32(info)

    def build(self, parts: CsrParts, bias: torch.Tensor | None, info: WeightInfo) -> Kernel:
        return _NumbaCsrKernel(parts, bias)


class NumbaBsr(Format):
    name, description = "numba_bsr", "numba block-sparse kernels, any tile"

    def unavailable(self, info: WeightInfo) -> str | None:
        return _cpu_float32(info) or (None if info.block else "no block structure")

    def build(self, parts: CsrParts, bias: torch.Tensor | None, info: WeightInfo) -> Kernel:
        assert info.block is not None
        return _NumbaBsrKernel(parts, bias, info.block)


class SemiStructured(Format):
    name, description = "semi24", "2:4 semi-structured (to_sparse_semi_structured), CUDA"

    def unavailable(self, info: WeightInfo) -> str | None:
        if info.device.type != "cuda":
            return "CUDA only"
        if not info.two_four:
            return "not 2:4 along the inputs"
        rows, cols = info.shape
        if rows % 64 or cols % 64:
            return "both dimensions must be multiples of 64"
        return None

    def build(self, parts: CsrParts, bias: torch.Tensor | None, info: WeightInfo) -> Kernel:
        return _SemiStructuredKernel(parts, bias)


class DirectConv(Format):
    """Marker format of convolutions run by :func:`~sconce_sparse.numba_kernels.conv2d_direct`
    (the layer builds that kernel itself; it needs the convolution's geometry)."""

    name, description = "numba_direct", "numba direct sparse convolution (no im2col)"

    def unavailable(self, info: WeightInfo) -> str | None:
        return _cpu_float32(info)


FORMATS: dict[str, Format] = {f.name: f for f in (Dense(), TorchCsr(), TorchBsr(), NumbaCsr(),
                                                  NumbaBsr(), SemiStructured(), DirectConv())}
"""Every format, by name."""

CONV_ONLY_FORMATS: tuple[str, ...] = ("numba_direct",)
"""Formats only convolutions have."""


def get_format(name: str) -> Format:
    """The format called ``name``.

    Raises:
        ConfigError: an unknown name (the message lists the known ones).

    Example:
        >>> get_format("csr").description
        'torch.sparse CSR (MKL on CPU, cuSPARSE on CUDA)'
    """
    check_formats((name,))
    return FORMATS[name]


def check_formats(names: tuple[str, ...] | list[str]) -> None:
    """Raise a one-line :class:`ConfigError` for any unknown format name.

    Example:
        >>> check_formats(["csr", "cssr"])  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        sconce.errors.ConfigError: unknown sparse format 'cssr'; did you mean 'csr'? (known: ...)
    """
    import difflib

    for name in names:
        if name not in FORMATS:
            close = difflib.get_close_matches(str(name), FORMATS, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ConfigError(f"unknown sparse format {name!r}; {hint}(known: "
                              f"{', '.join(FORMATS)})")
