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

__all__ = ["bsr_matmul_t", "bsr_matvec", "conv2d_direct", "csr_matmul_t", "csr_matvec",
           "match_torch_threads"]

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
