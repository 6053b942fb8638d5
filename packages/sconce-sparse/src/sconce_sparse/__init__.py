"""sconce-sparse: sparse engines and sparse storage that turn pruned weights into speed and size.

``sparse.engine`` runs each sparse Linear / Conv layer in the format measured fastest for it
(torch.sparse CSR / BSR, numba kernels, a direct sparse convolution, 2:4 on CUDA) or keeps it
dense; ``sparse.storage`` only saves the layers compressed. Both store the weights as a bitmask
or relative indices plus values, and report the true bytes.

Example:
    >>> import sconce
    >>> result = sconce.compress(model, "fashion-mnist", recipe=[
    ...     ("prune.gmp", {"sparsity": 0.9}), "sparse.engine"])  # doctest: +SKIP
"""

from __future__ import annotations

from sconce_sparse.blocks import block_fill, detect_block
from sconce_sparse.choice import Measurement, choose_plan
from sconce_sparse.config import EngineConfig, StorageConfig
from sconce_sparse.encoding import ENCODINGS, decode_dense, encode
from sconce_sparse.engine import SparseEngine
from sconce_sparse.formats import FORMATS, get_format
from sconce_sparse.layers import SparseConv, SparseEmbedding, SparseLayer, SparseLinear
from sconce_sparse.quantized import SparseQuantized
from sconce_sparse.storage import SparseStorage

__all__ = [
    "ENCODINGS", "FORMATS", "EngineConfig", "Measurement", "SparseConv", "SparseEmbedding",
    "SparseEngine", "SparseLayer", "SparseLinear", "SparseQuantized", "SparseStorage",
    "StorageConfig", "block_fill", "choose_plan", "decode_dense", "detect_block", "encode",
    "get_format",
]
