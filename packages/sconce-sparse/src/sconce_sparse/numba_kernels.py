"""CPU kernels compiled by numba: sparse x dense products, parallel over output rows.

Each kernel takes flat numpy views of torch tensors (no copies) and writes into an output
array the caller allocates. Rows of the sparse weight are shared among numba's threads
(``prange``); ``fastmath`` lets LLVM vectorise the inner loops, which only changes the
order of the float additions.

* :func:`csr_matvec` / :func:`bsr_matvec`: one input row (batch 1 of a Linear layer), a
  gather-dot per output row; the weight is read once, as values and 4-byte indices.
* :func:`csr_matmul_t` / :func:`bsr_matmul_t`: many input rows, given transposed
  (``xt``: ``(in, m)``), so each stored weight scales one contiguous row of ``xt`` into the
  output row ``yt[i]`` (``(out, m)``).
* :func:`conv2d_direct`: a direct sparse convolution (no im2col): each stored weight of
  output channel ``o`` adds a shifted window of one input plane to that channel's plane.

Example:
    >>> import numpy as np
    >>> indptr = np.array([0, 1, 2], np.int32); indices = np.array([1, 0], np.int32)
    >>> data = np.array([2.0, 3.0], np.float32); bias = np.zeros(2, np.float32)
    >>> y = np.empty(2, np.float32)
    >>> csr_matvec(indptr, indices, data, np.array([1.0, 10.0], np.float32), bias, y)
    >>> y.tolist()
    [20.0, 3.0]
"""

from __future__ import annotations

import logging

import numba
import numpy as np
import torch
from numba import njit, prange

logger = logging.getLogger(__name__)

__all__ = ["PANEL", "bsr_matmul_panels", "bsr_matmul_t", "bsr_matvec", "conv2d_direct",
           "csr_matmul_panels", "csr_matmul_t", "csr_matvec", "match_torch_threads", "panels_of"]

PANEL = 16
"""Input rows per panel of the ``*_panels`` kernels (one 64-byte line of float32)."""

def panels_of(x: torch.Tensor) -> torch.Tensor:
    """Input rows ``x`` (``(m, in)``, any strides) as ``(ceil(m / 16), in, 16)`` panels,
    zero-padded to whole panels, contiguous (one copy).

    Example:
        >>> panels_of(torch.arange(6.0).reshape(3, 2)).shape
        torch.Size([1, 2, 16])
    """
    rows = x.shape[0]
    padded = -(-rows // PANEL) * PANEL
    if padded != rows:
        x = torch.nn.functional.pad(x, (0, 0, 0, padded - rows))
    return x.reshape(padded // PANEL, PANEL, x.shape[1]).transpose(1, 2).contiguous()


def match_torch_threads() -> None:
    """Run numba's parallel loops on as many threads as torch uses (``torch.set_num_threads``).

    Example:
        >>> match_torch_threads()
        >>> numba.get_num_threads() == min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)
        True
    """
    limit = int(getattr(numba.config, "NUMBA_NUM_THREADS", 1))  # numba's pool size
    numba.set_num_threads(max(1, min(torch.get_num_threads(), limit)))


@njit(parallel=True, fastmath=True, cache=True, nogil=True)
def csr_matvec(indptr, indices, data, x, bias, y):  # type: ignore[no-untyped-def]
    """``y = W @ x + bias`` for a CSR weight ``W`` and one input vector ``x``."""
    for i in prange(indptr.shape[0] - 1):
        acc = np.float32(0.0)
        for p in range(indptr[i], indptr[i + 1]):
            acc += data[p] * x[indices[p]]
        y[i] = acc + bias[i]


@njit(parallel=True, fastmath=True, cache=True, nogil=True)
def csr_matmul_t(indptr, indices, data, xt, bias, yt):  # type: ignore[no-untyped-def]
    """``yt = W @ xt + bias[:, None]`` for a CSR weight and ``xt`` of shape ``(in, m)``."""
    m = xt.shape[1]
    for i in prange(indptr.shape[0] - 1):
        row = yt[i]
        for b in range(m):
            row[b] = bias[i]
        for p in range(indptr[i], indptr[i + 1]):
            v = data[p]
            source = xt[indices[p]]
            for b in range(m):
                row[b] += v * source[b]


@njit(parallel=True, fastmath=True, cache=True, nogil=True)
def bsr_matvec(indptr, indices, blocks, x, bias, y):  # type: ignore[no-untyped-def]
    """``y = W @ x + bias`` for a block-sparse weight: ``blocks`` is ``(n, r, c)``."""
    r = blocks.shape[1]
    c = blocks.shape[2]
    for ib in prange(indptr.shape[0] - 1):
        for k in range(r):
            acc = np.float32(0.0)
            for p in range(indptr[ib], indptr[ib + 1]):
                start = indices[p] * c
                for j in range(c):
                    acc += blocks[p, k, j] * x[start + j]
            y[ib * r + k] = acc + bias[ib * r + k]


@njit(parallel=True, fastmath=True, cache=True, nogil=True)
def bsr_matmul_t(indptr, indices, blocks, xt, bias, yt):  # type: ignore[no-untyped-def]
    """``yt = W @ xt + bias[:, None]`` for a block-sparse weight and ``xt`` ``(in, m)``."""
    r = blocks.shape[1]
    c = blocks.shape[2]
    m = xt.shape[1]
    for ib in prange(indptr.shape[0] - 1):
        for k in range(r):
            row = yt[ib * r + k]
            for b in range(m):
                row[b] = bias[ib * r + k]
            for p in range(indptr[ib], indptr[ib + 1]):
                start = indices[p] * c
                for j in range(c):
                    v = blocks[p, k, j]
                    source = xt[start + j]
                    for b in range(m):
                        row[b] += v * source[b]


@njit(parallel=True, fastmath=True, cache=True, nogil=True)
def conv2d_direct(indptr, offsets, data, xpad, bias, out, stride_h, stride_w):  # type: ignore[no-untyped-def]
    """A direct sparse 2-D convolution.

    Args:
        indptr: CSR row pointers over output channels.
        offsets: for each stored weight ``(c, kh, kw)``, its offset in one padded input
            sample: ``c * Hp * Wp + kh * dilation_h * Wp + kw * dilation_w``.
        data: the stored weights.
        xpad: the padded input, ``(n, C, Hp, Wp)``, contiguous.
        bias: one per output channel.
        out: ``(n, O, Ho, Wo)``, written.
        stride_h, stride_w: the convolution's strides.
    """
    n, channels_out, height, width = out.shape
    wp = xpad.shape[3]
    for task in prange(n * channels_out):
        sample = task // channels_out
        o = task % channels_out
        plane = out[sample, o]
        source = xpad[sample].reshape(-1)
        for y in range(height):
            for x in range(width):
                plane[y, x] = bias[o]
        for p in range(indptr[o], indptr[o + 1]):
            v = data[p]
            base = offsets[p]
            for y in range(height):
                start = base + y * stride_h * wp
                line = plane[y]
                for x in range(width):
                    line[x] += v * source[start + x * stride_w]


@njit(parallel=True, fastmath=True, cache=True, nogil=True)
def csr_matmul_panels(indptr, indices, data, panels, bias, out):  # type: ignore[no-untyped-def]
    """``out = X @ W.T + bias`` for a CSR weight, X given as 16-column panels.

    ``panels`` is ``(ceil(m / 16), in, 16)``: panel ``c`` holds input rows ``16c .. 16c+15``
    transposed, so one stored weight meets one 64-byte line of its panel, and a panel
    (``in * 64`` bytes) stays in the core's L2 cache while every output row is computed
    against it. The 16 partial sums live in registers (explicit scalars: numba keeps local
    scalars in registers, not arrays). ``out`` is ``(m, out)``, any strides.
    """
    m = out.shape[0]
    for c in range(panels.shape[0]):
        panel = panels[c]
        base = c * 16
        for i in prange(indptr.shape[0] - 1):
            a0 = np.float32(0.0)
            a1 = np.float32(0.0)
            a2 = np.float32(0.0)
            a3 = np.float32(0.0)
            a4 = np.float32(0.0)
            a5 = np.float32(0.0)
            a6 = np.float32(0.0)
            a7 = np.float32(0.0)
            a8 = np.float32(0.0)
            a9 = np.float32(0.0)
            a10 = np.float32(0.0)
            a11 = np.float32(0.0)
            a12 = np.float32(0.0)
            a13 = np.float32(0.0)
            a14 = np.float32(0.0)
            a15 = np.float32(0.0)
            for p in range(indptr[i], indptr[i + 1]):
                v = data[p]
                source = panel[indices[p]]
                a0 += v * source[0]
                a1 += v * source[1]
                a2 += v * source[2]
                a3 += v * source[3]
                a4 += v * source[4]
                a5 += v * source[5]
                a6 += v * source[6]
                a7 += v * source[7]
                a8 += v * source[8]
                a9 += v * source[9]
                a10 += v * source[10]
                a11 += v * source[11]
                a12 += v * source[12]
                a13 += v * source[13]
                a14 += v * source[14]
                a15 += v * source[15]
            if base + 0 < m:
                out[base + 0, i] = a0 + bias[i]
            if base + 1 < m:
                out[base + 1, i] = a1 + bias[i]
            if base + 2 < m:
                out[base + 2, i] = a2 + bias[i]
            if base + 3 < m:
                out[base + 3, i] = a3 + bias[i]
            if base + 4 < m:
                out[base + 4, i] = a4 + bias[i]
            if base + 5 < m:
                out[base + 5, i] = a5 + bias[i]
            if base + 6 < m:
                out[base + 6, i] = a6 + bias[i]
            if base + 7 < m:
                out[base + 7, i] = a7 + bias[i]
            if base + 8 < m:
                out[base + 8, i] = a8 + bias[i]
            if base + 9 < m:
                out[base + 9, i] = a9 + bias[i]
            if base + 10 < m:
                out[base + 10, i] = a10 + bias[i]
            if base + 11 < m:
                out[base + 11, i] = a11 + bias[i]
            if base + 12 < m:
                out[base + 12, i] = a12 + bias[i]
            if base + 13 < m:
                out[base + 13, i] = a13 + bias[i]
            if base + 14 < m:
                out[base + 14, i] = a14 + bias[i]
            if base + 15 < m:
                out[base + 15, i] = a15 + bias[i]


@njit(parallel=True, fastmath=True, cache=True, nogil=True)
def bsr_matmul_panels(indptr, indices, blocks, panels, bias, out):  # type: ignore[no-untyped-def]
    """Like :func:`csr_matmul_panels` for a block-sparse weight (``blocks``: ``(n, r, c)``):
    the ``c`` panel lines of a tile are contiguous and are reused by its ``r`` rows."""
    m = out.shape[0]
    rows = blocks.shape[1]
    cols = blocks.shape[2]
    for c in range(panels.shape[0]):
        panel = panels[c]
        base = c * 16
        for ib in prange(indptr.shape[0] - 1):
            for r in range(rows):
                row = ib * rows + r
                a0 = np.float32(0.0)
                a1 = np.float32(0.0)
                a2 = np.float32(0.0)
                a3 = np.float32(0.0)
                a4 = np.float32(0.0)
                a5 = np.float32(0.0)
                a6 = np.float32(0.0)
                a7 = np.float32(0.0)
                a8 = np.float32(0.0)
                a9 = np.float32(0.0)
                a10 = np.float32(0.0)
                a11 = np.float32(0.0)
                a12 = np.float32(0.0)
                a13 = np.float32(0.0)
                a14 = np.float32(0.0)
                a15 = np.float32(0.0)
                for p in range(indptr[ib], indptr[ib + 1]):
                    start = indices[p] * cols
                    for j in range(cols):
                        v = blocks[p, r, j]
                        source = panel[start + j]
                        a0 += v * source[0]
                        a1 += v * source[1]
                        a2 += v * source[2]
                        a3 += v * source[3]
                        a4 += v * source[4]
                        a5 += v * source[5]
                        a6 += v * source[6]
                        a7 += v * source[7]
                        a8 += v * source[8]
                        a9 += v * source[9]
                        a10 += v * source[10]
                        a11 += v * source[11]
                        a12 += v * source[12]
                        a13 += v * source[13]
                        a14 += v * source[14]
                        a15 += v * source[15]
                if base + 0 < m:
                    out[base + 0, row] = a0 + bias[row]
                if base + 1 < m:
                    out[base + 1, row] = a1 + bias[row]
                if base + 2 < m:
                    out[base + 2, row] = a2 + bias[row]
                if base + 3 < m:
                    out[base + 3, row] = a3 + bias[row]
                if base + 4 < m:
                    out[base + 4, row] = a4 + bias[row]
                if base + 5 < m:
                    out[base + 5, row] = a5 + bias[row]
                if base + 6 < m:
                    out[base + 6, row] = a6 + bias[row]
                if base + 7 < m:
                    out[base + 7, row] = a7 + bias[row]
                if base + 8 < m:
                    out[base + 8, row] = a8 + bias[row]
                if base + 9 < m:
                    out[base + 9, row] = a9 + bias[row]
                if base + 10 < m:
                    out[base + 10, row] = a10 + bias[row]
                if base + 11 < m:
                    out[base + 11, row] = a11 + bias[row]
                if base + 12 < m:
                    out[base + 12, row] = a12 + bias[row]
                if base + 13 < m:
                    out[base + 13, row] = a13 + bias[row]
                if base + 14 < m:
                    out[base + 14, row] = a14 + bias[row]
                if base + 15 < m:
                    out[base + 15, row] = a15 + bias[row]
