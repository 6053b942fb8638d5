"""Compressed storage of a sparse weight matrix: a bitmask, or relative indices, plus values.

A weight is stored as the 2-D matrix ``weight.reshape(rows, -1)`` (a convolution's
``(out, in * kh * kw)``) in one of two encodings, whichever is smaller for that matrix:

``bitmask``
    one bit per position (``ceil(rows * cols / 8)`` bytes, row-major, least significant bit
    first) and the stored values in row-major order. Best at moderate sparsity.
``relative``
    per stored value the number of positions skipped since the previous one in its row, as
    one byte (``gaps``), the values, and the number of entries of each row (``row_entries``,
    int32). A run longer than 255 positions is bridged by a padding entry that holds the
    background value, the trick of Han et al.'s Deep Compression. Best at high sparsity:
    at 90% it costs 1 byte of index per kept value against 1.25 for the bitmask.

"Background" is the value of the positions not stored: 0 for float weights, the zero point
of each row for int8 weights. Values keep the weight's dtype, so an int8 weight is stored in
int8 (its scales travel beside it, see :mod:`sconce_sparse.quantized`).

Example:
    >>> import torch
    >>> matrix = torch.tensor([[0.0, 2.0, 0.0, 0.0], [0.0, 0.0, 0.0, -1.0]])
    >>> stored = encode(matrix, "relative")
    >>> stored.tensors["gaps"].tolist(), stored.tensors["values"].tolist()
    ([1, 3], [2.0, -1.0])
    >>> torch.equal(decode_dense(stored.encoding, stored.tensors, matrix.shape), matrix)
    True
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import torch

from sconce.errors import ConfigError

logger = logging.getLogger(__name__)

__all__ = [
    "ENCODINGS", "CsrParts", "Encoded", "decode_csr", "decode_dense", "encode",
    "encoded_nbytes", "encoding_keys",
]

ENCODINGS: tuple[str, ...] = ("auto", "bitmask", "relative")
"""Encodings :func:`encode` accepts; ``auto`` picks the smaller of the other two per matrix."""

Shape = tuple[int, int] | torch.Size
_MAX_GAP = 255  # one byte of skipped positions per entry
_KEYS = {"bitmask": ("bitmask", "values"), "relative": ("gaps", "row_entries", "values")}


@dataclass(frozen=True)
class Encoded:
    """A matrix in a compressed encoding.

    Attributes:
        encoding: ``bitmask`` or ``relative``.
        tensors: the stored tensors, by name (see :func:`encoding_keys`).
        nnz: positions that differ from the background.
    """

    encoding: str
    tensors: dict[str, torch.Tensor]
    nnz: int

    @property
    def nbytes(self) -> int:
        """Bytes of the stored tensors."""
        return sum(t.numel() * t.element_size() for t in self.tensors.values())


@dataclass(frozen=True)
class CsrParts:
    """A matrix in compressed sparse row form, ready for a kernel.

    Attributes:
        crow: row pointers, int64, ``rows + 1``.
        col: column of each stored value, int64.
        values: the stored values (background positions left out).
        shape: ``(rows, cols)``.
    """

    crow: torch.Tensor
    col: torch.Tensor
    values: torch.Tensor
    shape: tuple[int, int]

    @property
    def nnz(self) -> int:
        """Stored values."""
        return int(self.values.numel())

    def rows(self) -> torch.Tensor:
        """The row of each stored value, int64.

        Example:
            >>> decode_csr("bitmask", encode(torch.eye(2), "bitmask").tensors, (2, 2)).rows()
            tensor([0, 1])
        """
        counts = self.crow[1:] - self.crow[:-1]
        return torch.repeat_interleave(torch.arange(self.shape[0], device=counts.device), counts)

    def to_dense(self) -> torch.Tensor:
        """The dense matrix (zeros where nothing is stored).

        Example:
            >>> decode_csr("relative", encode(torch.eye(2), "relative").tensors, (2, 2)).to_dense()
            tensor([[1., 0.],
                    [0., 1.]])
        """
        dense = torch.zeros(self.shape, dtype=self.values.dtype, device=self.values.device)
        dense[self.rows(), self.col] = self.values
        return dense


def encoding_keys(encoding: str) -> tuple[str, ...]:
    """Names of the tensors an encoding stores.

    Example:
        >>> encoding_keys("bitmask")
        ('bitmask', 'values')
    """
    if encoding not in _KEYS:
        raise ConfigError(f"unknown sparse encoding {encoding!r}; use one of "
                          f"{', '.join(map(repr, ENCODINGS))}")
    return _KEYS[encoding]


def _background(matrix: torch.Tensor, background: torch.Tensor | None) -> torch.Tensor:
    if background is None:
        return torch.zeros(matrix.shape[0], 1, dtype=matrix.dtype, device=matrix.device)
    return background.reshape(-1, 1).to(device=matrix.device, dtype=matrix.dtype).expand(
        matrix.shape[0], 1)


def _relative_sizes(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per stored value: its row, its gap since the previous entry, the paddings before it."""
    rows, cols = mask.nonzero(as_tuple=True)
    previous = torch.full_like(cols, -1)
    if cols.numel() > 1:
        same_row = rows[1:] == rows[:-1]
        previous[1:] = torch.where(same_row, cols[:-1], previous[1:])
    gap = cols - previous - 1
    return rows, gap, gap // (_MAX_GAP + 1)


def encoded_nbytes(mask: torch.Tensor, value_bytes: int) -> dict[str, int]:
    """Bytes each encoding would take for a matrix whose stored positions are ``mask``.

    Example:
        >>> encoded_nbytes(torch.eye(8, dtype=torch.bool), 4)
        {'bitmask': 40, 'relative': 72}
    """
    nnz = int(mask.sum())
    _, _, paddings = _relative_sizes(mask)
    entries = nnz + int(paddings.sum())
    return {"bitmask": math.ceil(mask.numel() / 8) + nnz * value_bytes,
            "relative": entries * (1 + value_bytes) + 4 * mask.shape[0]}


def encode(matrix: torch.Tensor, encoding: str = "auto",
           background: torch.Tensor | None = None) -> Encoded:
    """Encode a 2-D matrix, storing the positions that differ from the background.

    Args:
        matrix: ``(rows, cols)``, float or int8.
        encoding: ``bitmask``, ``relative`` or ``auto`` (the smaller one for this matrix).
        background: the value of unstored positions, one per row (default 0).

    Example:
        >>> encode(torch.eye(64), "auto").encoding  # 98% sparse: relative indices win
        'relative'
        >>> encode(torch.ones(8, 8) - torch.eye(8), "auto").encoding
        'bitmask'
    """
    if matrix.dim() != 2:
        raise ValueError(f"encode takes a 2-D matrix, got shape {tuple(matrix.shape)}")
    if encoding not in ENCODINGS:
        raise ConfigError(f"unknown sparse encoding {encoding!r}; use one of "
                          f"{', '.join(map(repr, ENCODINGS))}")
    matrix = matrix.detach()
    fill = _background(matrix, background)
    mask = matrix != fill
    if encoding == "auto":
        sizes = encoded_nbytes(mask, matrix.element_size())
        encoding = min(sizes, key=lambda name: (sizes[name], name))
    nnz = int(mask.sum())
    if encoding == "bitmask":
        bits = np.packbits(mask.reshape(-1).cpu().numpy(), bitorder="little")
        tensors = {"bitmask": torch.from_numpy(bits).to(matrix.device),
                   "values": matrix[mask].contiguous()}
        return Encoded("bitmask", tensors, nnz)
    rows, gap, paddings = _relative_sizes(mask)
    per_entry = paddings + 1
    total = int(per_entry.sum())
    entry_row = torch.repeat_interleave(rows, per_entry)
    gaps = torch.full((total,), _MAX_GAP, dtype=torch.uint8, device=matrix.device)
    values = fill[entry_row, 0].clone()
    real = torch.cumsum(per_entry, 0) - 1  # each value comes after its paddings
    gaps[real] = (gap - paddings * (_MAX_GAP + 1)).to(torch.uint8)
    values[real] = matrix[mask]
    row_entries = torch.bincount(rows, weights=per_entry.to(torch.float64),
                                 minlength=matrix.shape[0]).to(torch.int32)
    return Encoded("relative", {"gaps": gaps, "row_entries": row_entries, "values": values}, nnz)


def decode_csr(encoding: str, tensors: dict[str, torch.Tensor], shape: Shape,
               background: torch.Tensor | None = None) -> CsrParts:
    """The stored values with their rows and columns, in row-major order.

    Example:
        >>> parts = decode_csr("bitmask", encode(torch.eye(3)).tensors, (3, 3))
        >>> parts.crow.tolist(), parts.col.tolist()
        ([0, 1, 2, 3], [0, 1, 2])
    """
    encoding_keys(encoding)  # an unknown encoding is a one-line error
    rows_n, cols_n = int(shape[0]), int(shape[1])
    values = tensors["values"]
    device = values.device
    if encoding == "bitmask":
        bits = np.unpackbits(tensors["bitmask"].cpu().numpy(), count=rows_n * cols_n,
                             bitorder="little")
        flat = torch.from_numpy(bits.astype(np.bool_)).to(device).nonzero().reshape(-1)
        rows, col, kept = flat // cols_n, flat % cols_n, values
    else:
        row_entries = tensors["row_entries"].to(torch.int64)
        if int(row_entries.sum()) != values.numel():
            raise ValueError("damaged sparse weight: the row counts do not match the values")
        entry_row = torch.repeat_interleave(torch.arange(rows_n, device=device), row_entries)
        position = torch.cumsum(tensors["gaps"].to(torch.int64) + 1, 0)
        start = torch.cumsum(row_entries, 0) - row_entries  # first entry of each row
        padded = torch.cat([position.new_zeros(1), position])  # padded[i]: end of entry i-1
        before = padded[start]
        col = position - before[entry_row] - 1
        fill = (torch.zeros((), dtype=values.dtype, device=device) if background is None
                else background.reshape(-1).to(device=device, dtype=values.dtype)[entry_row])
        real = values != fill  # padding entries hold the background
        rows, col, kept = entry_row[real], col[real], values[real]
    counts = torch.bincount(rows, minlength=rows_n)
    crow = torch.zeros(rows_n + 1, dtype=torch.int64, device=device)
    crow[1:] = torch.cumsum(counts, 0)
    return CsrParts(crow, col.to(torch.int64), kept, (rows_n, cols_n))


def decode_dense(encoding: str, tensors: dict[str, torch.Tensor], shape: Shape,
                 background: torch.Tensor | None = None) -> torch.Tensor:
    """The full matrix back (background where nothing is stored).

    Example:
        >>> stored = encode(torch.tensor([[0.0, 3.0]]), "bitmask")
        >>> decode_dense("bitmask", stored.tensors, (1, 2))
        tensor([[0., 3.]])
    """
    parts = decode_csr(encoding, tensors, shape, background)
    dense = parts.to_dense()
    if background is not None:
        fill = background.reshape(-1, 1).to(dense.dtype).expand_as(dense)
        stored = torch.zeros(parts.shape, dtype=torch.bool, device=dense.device)
        stored[parts.rows(), parts.col] = True
        dense = torch.where(stored, dense, fill)
    return dense
