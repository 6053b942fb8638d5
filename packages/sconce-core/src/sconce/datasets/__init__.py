"""Built-in datasets: real data that works offline.

Example:
    >>> data = digits(batch_size=32)  # doctest: +SKIP
    >>> data.input_shape, data.num_classes  # doctest: +SKIP
    ((1, 8, 8), 10)
"""

from __future__ import annotations

from sconce.datasets.digits import digits
from sconce.datasets.fashion_mnist import DEFAULT_FASHION_MNIST_DIR, fashion_mnist, read_idx
from sconce.datasets.text import causal_lm_text, english_text, sentence_text

__all__ = ["DEFAULT_FASHION_MNIST_DIR", "causal_lm_text", "digits", "english_text",
           "fashion_mnist", "read_idx", "sentence_text"]
