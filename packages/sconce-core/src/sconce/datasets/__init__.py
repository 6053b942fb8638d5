"""Built-in datasets: real data that works offline.

Example:
    >>> data = digits(batch_size=32)  # doctest: +SKIP
    >>> data.input_shape, data.num_classes  # doctest: +SKIP
    ((1, 8, 8), 10)
"""

from __future__ import annotations

from sconce.datasets.digits import digits
from sconce.datasets.fashion_mnist import DEFAULT_FASHION_MNIST_DIR, fashion_mnist, read_idx

__all__ = ["DEFAULT_FASHION_MNIST_DIR", "digits", "fashion_mnist", "read_idx"]
